"""ContrastiveHead: a modality's (or the text's) vectors into the shared, L2-normalised space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuroomics_bridge.adapters.config import HeadKind

__all__ = ["ContrastiveHead"]


class ContrastiveHead(nn.Module):
    """``(n, in_dim) -> (n, out_dim)`` unit vectors, CLIP's projection on top of a frozen tower.

    ``kind="linear"`` is one linear map; ``"mlp"`` adds a GELU hidden layer of width ``hidden``
    (with dropout), the shape CellWhisperer and LLaVA-1.5 use for their adapters. A LayerNorm on
    the input puts modalities of very different scales (PCA scores, pooled LLM states) on an
    equal footing.

    Parameters
    ----------
    in_dim, out_dim
        Input width and width of the shared space.
    kind, hidden, dropout
        ``"linear"`` or ``"mlp"``; the MLP's hidden width and dropout.
    """

    def __init__(self, in_dim: int, out_dim: int, *, kind: HeadKind = "mlp", hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        if kind == "linear":
            self.project: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.project = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(n, in_dim)`` vectors to ``(n, out_dim)`` unit vectors."""
        return F.normalize(self.project(self.norm(x)), dim=-1)
