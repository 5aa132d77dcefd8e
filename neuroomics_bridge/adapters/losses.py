"""Contrastive losses from open_clip, made aware of missing modalities and repeated texts.

open_clip's ``ClipLoss`` and ``SigLipLoss`` assume every row is present and every text unique.
In a cohort, a subject may lack a modality, and many subjects can share one text (a diagnosis,
a cell type), which must not count as negatives of each other. ``PairLoss`` therefore gathers
features across ranks with open_clip's ``gather_features``, builds logits with open_clip's
``get_logits``, and then (i) drops absent rows and columns and (ii) treats rows sharing a
``group`` (the same text) as positives: masked out of the CLIP softmax, labelled +1 for SigLIP.
With nothing absent and nothing repeated it equals open_clip's loss exactly.

open_clip is imported at the first loss computed, not with this module: with it, loading a
bridge's modules took 11.1-12.2 s on a 2-core AMD EPYC, without it 6.4-7.3 s, and a bridge that
only writes reports never computes a loss.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from neuroomics_bridge.adapters.config import LossKind

if TYPE_CHECKING:
    from open_clip.loss import ClipLoss, SigLipLoss

__all__ = ["PairLoss"]


class PairLoss(nn.Module):
    """Symmetric contrastive loss between two aligned sets of unit vectors, with its temperature.

    The temperature is learnable (``logit_scale = log(1/T)``, capped at 100 as in CLIP); the
    SigLIP variant also learns a bias, initialised at -10 as in the SigLIP paper.

    Parameters
    ----------
    kind
        ``"clip"`` (open_clip's ``ClipLoss``) or ``"siglip"`` (``SigLipLoss``).
    init_temperature
        Starting temperature of the CLIP loss; the SigLIP loss ignores it and starts at
        ``logit_scale = log(10)``.
    rank, world_size
        This process and the number of processes; with ``world_size > 1`` features are gathered
        across ranks.
    """

    def __init__(
        self, kind: LossKind = "clip", *, init_temperature: float = 0.07, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        self.kind = kind
        self.rank, self.world_size = rank, world_size
        initial_scale = 10.0 if kind == "siglip" else 1.0 / init_temperature
        self.logit_scale = nn.Parameter(torch.tensor(math.log(initial_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if kind == "siglip" else None

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, present: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of ``a`` against ``b`` over the rows where ``present`` is True.

        Parameters
        ----------
        a, b
            ``(n, d)`` unit vectors; row ``i`` of each is the same subject.
        present
            ``(n,)`` bool: rows where both sides exist.
        groups
            ``(n,)`` integers marking rows whose ``b`` items are identical (same text); such rows
            are positives of each other, not negatives.

        Returns
        -------
        torch.Tensor
            The scalar loss; a graph-connected zero when fewer than 2 rows are present.
        """
        if self.world_size > 1:
            from open_clip.loss import gather_features

            a, b = gather_features(a, b, gather_with_grad=True, rank=self.rank, world_size=self.world_size)
            present, groups = _gather(present), None if groups is None else _gather(groups)
        keep = present.bool()
        a, b = a[keep], b[keep]
        if a.shape[0] < 2:
            return a.sum() * 0.0  # nothing to contrast in this batch; keeps the graph connected
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        same = torch.eye(len(a), dtype=torch.bool, device=a.device)
        if groups is not None:
            kept = groups[keep]
            same = kept[:, None] == kept[None, :]
        if self.kind == "clip":
            logits = _open_clip_loss(self.kind).get_logits(a, b, scale)[0]
            others_alike = same & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
            logits = logits.masked_fill(others_alike, float("-inf"))
            targets = torch.arange(len(a), device=a.device)
            return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        logits = _open_clip_loss(self.kind).get_logits(a, b, scale, self.logit_bias)
        labels = same.to(logits.dtype) * 2 - 1
        return -F.logsigmoid(labels * logits).sum() / len(a)

    def similarity_scale(self) -> torch.Tensor:
        """The current ``1 / temperature``."""
        return self.logit_scale.detach().clamp(max=math.log(100.0)).exp()


@functools.cache
def _open_clip_loss(kind: LossKind) -> ClipLoss | SigLipLoss:
    """open_clip's ``ClipLoss`` or ``SigLipLoss``, built with ``world_size=1``: ``PairLoss`` gathers
    across ranks itself, so ``get_logits`` only multiplies, and it keeps no state between calls."""
    from open_clip.loss import ClipLoss, SigLipLoss

    return ClipLoss() if kind == "clip" else SigLipLoss()


def _gather(values: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.zeros_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)
