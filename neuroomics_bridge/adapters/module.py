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
    """Projection heads per modality and for text, one loss per pair, and the prefix projector.

    Parameters
    ----------
    modality_dims
        Modality name -> width of its vectors; at least one, none named ``"text"``.
    text_dim
        Width of the backbone's text vectors.
    hidden_size
        The backbone's hidden size (width of the soft prefix tokens).
    config
        Head, loss and prefix settings.

    Raises
    ------
    ConfigError
        When ``modality_dims`` is empty or names ``"text"``.
    """

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
        self.prefix_input = config.prefix_input
        prefix_dims = {m: _prefix_width(d, config) for m, d in self.modality_dims.items()}
        self.projector = PrefixProjector(
            prefix_dims, hidden_size, tokens=config.prefix_tokens, token_norm=config.prefix_token_norm or 1.0
        )
        # Pooled LLM states share a large common direction (anisotropy); subtracting the training
        # texts' mean before the text head lets it see what distinguishes one report from another.
        self.register_buffer("text_center", torch.zeros(text_dim))
        # Each modality's mean embedding over reference subjects, set by Bridge.calibrate.
        for modality in modalities:
            self.register_buffer(f"gap_{modality}", torch.zeros(config.embed_dim))
        # Each modality's zero-shot temperature, fitted on a validation fold by Bridge.fit_temperature.
        for modality in modalities:
            self.register_buffer(f"temperature_{modality}", torch.ones(()))

    def embed_text(self, text: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone text vectors ``(n, text_dim)`` to unit vectors in the aligned space, centred on
        ``center`` before the head (default: the training texts' mean, ``text_center``)."""
        return self.heads[TEXT](text - (self.text_center if center is None else center))

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
        """Mean pair loss over every modality-text pair (and modality pair) of a batch.

        Parameters
        ----------
        features
            Modality -> ``(n, d_m)`` vectors (NaN rows of absent subjects are zeroed).
        present
            Modality -> ``(n,)`` bool: who has that modality.
        text
            ``(n, text_dim)`` backbone vectors of each subject's text.
        text_groups
            ``(n,)`` integers marking subjects that share one text (see :class:`PairLoss`).

        Returns
        -------
        ContrastiveOutput
            The mean loss and each pair's part.
        """
        embedded = {m: self.heads[m](torch.nan_to_num(x)) for m, x in features.items()}
        embedded[TEXT] = self.embed_text(text)
        has = {**present, TEXT: torch.ones(len(text), dtype=torch.bool, device=text.device)}
        parts = {}
        for a, b in self.pairs:
            groups = text_groups if b == TEXT else None
            parts[f"{a}-{b}"] = self.losses[f"{a}-{b}"](embedded[a], embedded[b], has[a] & has[b], groups)
        return ContrastiveOutput(loss=torch.stack(list(parts.values())).mean(), parts=parts)

    def prefix(self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Soft prefix tokens ``(n, n_tokens, hidden_size)`` of a batch of modality vectors.

        The projector reads what ``BridgeConfig.prefix_input`` names: the raw vector, its aligned
        embedding (the contrastive head's output, computed in eval mode and without gradients:
        the prefix stage leaves the aligned space as the contrastive stage made it), or both.
        """
        inputs = {}
        for modality, x in features.items():
            x = torch.nan_to_num(x)
            parts = [x] if self.prefix_input != "aligned" else []
            if self.prefix_input != "raw":
                parts.append(self._aligned(modality, x))
            inputs[modality] = torch.cat(parts, dim=1)
        return self.projector(inputs, present)

    def _aligned(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        head = self.heads[modality]
        mode = head.training
        head.eval()
        try:
            with torch.no_grad():
                return head(x)
        finally:
            head.train(mode)


def _prefix_width(dim: int, config: BridgeConfig) -> int:
    """Input width of a modality's prefix projector for ``config.prefix_input``."""
    return {"raw": dim, "aligned": config.embed_dim, "both": dim + config.embed_dim}[config.prefix_input]
