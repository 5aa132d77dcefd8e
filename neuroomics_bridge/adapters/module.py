"""BridgeAdapters: every trainable part of a bridge in one ``nn.Module`` (no backbone inside).

Keeping the backbone out means ``state_dict()`` holds only adapter weights, so a saved bridge is
megabytes, never a copy of the LLM (as peft saves adapters only).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping

import torch
from torch import nn

from neuroomics_bridge.adapters.config import BridgeConfig
from neuroomics_bridge.adapters.heads import ContrastiveHead
from neuroomics_bridge.adapters.losses import PairLoss
from neuroomics_bridge.adapters.prefix import PrefixProjector
from neuroomics_bridge.errors import ConfigError

__all__ = ["BridgeAdapters", "ContrastiveOutput", "TEXT"]

TEXT = "text"


@dataclasses.dataclass
class ContrastiveOutput:
    """The total contrastive loss and its part for each aligned pair (``"gene-text"`` ...)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


class BridgeAdapters(nn.Module):
    """Projection heads per modality and for text, one loss per pair, and the prefix projector."""

    def __init__(self, modality_dims: Mapping[str, int], text_dim: int, hidden_size: int, config: BridgeConfig) -> None:
        super().__init__()
        if not modality_dims or TEXT in modality_dims:
            raise ConfigError(
                f"modality_dims: expected at least one modality, none named {TEXT!r}; got {dict(modality_dims)}"
            )
        self.modality_dims = dict(modality_dims)
        dims = {**self.modality_dims, TEXT: text_dim}
        self.heads = nn.ModuleDict(
            {
                name: ContrastiveHead(
                    dim, config.embed_dim, kind=config.head, hidden=config.head_hidden, dropout=config.dropout
                )
                for name, dim in dims.items()
            }
        )
        modalities = list(self.modality_dims)
        self.pairs = [(m, TEXT) for m in modalities]
        if config.cross_modal:
            self.pairs += list(itertools.combinations(modalities, 2))
        self.losses = nn.ModuleDict(
            {f"{a}-{b}": PairLoss(config.loss, init_temperature=config.init_temperature) for a, b in self.pairs}
        )
        self.projector = PrefixProjector(self.modality_dims, hidden_size, tokens=config.prefix_tokens)
        # Pooled LLM states share a large common direction (anisotropy); subtracting the training
        # texts' mean before the text head lets it see what distinguishes one report from another.
        self.register_buffer("text_center", torch.zeros(text_dim))
        # Each modality's mean embedding over reference subjects, set by Bridge.calibrate.
        for modality in modalities:
            self.register_buffer(f"gap_{modality}", torch.zeros(config.embed_dim))

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Backbone text vectors ``(n, text_dim)`` to unit vectors in the aligned space."""
        return self.heads[TEXT](text - self.text_center)

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Let the losses gather features across ``world_size`` processes."""
        for loss in self.losses.values():
            loss.rank, loss.world_size = rank, world_size

    def contrastive(
        self,
        features: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor],
        text: torch.Tensor,
        text_groups: torch.Tensor | None = None,
    ) -> ContrastiveOutput:
        """Mean pair loss over every modality-text pair (and modality pair) of a batch."""
        embedded = {m: self.heads[m](torch.nan_to_num(x)) for m, x in features.items()}
        embedded[TEXT] = self.embed_text(text)
        has = {**present, TEXT: torch.ones(len(text), dtype=torch.bool, device=text.device)}
        parts = {}
        for a, b in self.pairs:
            groups = text_groups if b == TEXT else None
            parts[f"{a}-{b}"] = self.losses[f"{a}-{b}"](embedded[a], embedded[b], has[a] & has[b], groups)
        return ContrastiveOutput(loss=torch.stack(list(parts.values())).mean(), parts=parts)
