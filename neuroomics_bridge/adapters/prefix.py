"""PrefixProjector: modality vectors to soft tokens in the language model's input space.

LLaVA connects a vision tower to the LLM with ``mlp2x_gelu`` (Linear, GELU, Linear) applied to
each visual token. A subject here is one vector per modality, so the first layer expands it
into ``k`` token slots and the second is LLaVA's per-token layer, shared by the slots. Each
modality adds a learned type embedding to its tokens; a subject lacking a modality gets that
modality's learned "absent" tokens instead, so the language model can tell, and every row of a
batch has the same number of soft tokens. Modalities are concatenated in a fixed order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["PrefixProjector"]


class PrefixProjector(nn.Module):
    """``{modality: (n, d_m)}`` -> ``(n, k * n_modalities, hidden_size)`` soft prefix tokens."""

    def __init__(self, modality_dims: Mapping[str, int], hidden_size: int, *, tokens: int = 8) -> None:
        super().__init__()
        self.modalities = tuple(modality_dims)
        self.tokens = tokens
        self.hidden_size = hidden_size
        self.expand = nn.ModuleDict({m: nn.Linear(d, tokens * hidden_size) for m, d in modality_dims.items()})
        self.act = nn.GELU()
        self.mix = nn.Linear(hidden_size, hidden_size)
        self.type_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(hidden_size)) for m in self.modalities})
        self.absent = nn.ParameterDict(
            {m: nn.Parameter(0.02 * torch.randn(tokens, hidden_size)) for m in self.modalities}
        )

    @property
    def n_tokens(self) -> int:
        return self.tokens * len(self.modalities)

    def forward(self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Soft tokens for a batch; ``present[m]`` (``(n,)`` bool) says who has modality ``m``.

        Rows of absent subjects in ``inputs[m]`` are ignored (they may hold zeros or NaN).
        """
        blocks = []
        for modality in self.modalities:
            x = torch.nan_to_num(inputs[modality])
            tokens = self.mix(self.act(self.expand[modality](x).view(len(x), self.tokens, self.hidden_size)))
            tokens = tokens + self.type_embedding[modality]
            mask = present[modality].view(-1, 1, 1).to(tokens.dtype)
            blocks.append(mask * tokens + (1 - mask) * self.absent[modality])
        return torch.cat(blocks, dim=1)
