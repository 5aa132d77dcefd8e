"""PrefixProjector: modality vectors to soft tokens in the language model's input space.

LLaVA connects a vision tower to the LLM with ``mlp2x_gelu`` (Linear, GELU, Linear) applied to
each visual token. A subject here is one vector per modality, so the first layer expands it
into ``k`` token slots and the second is LLaVA's per-token layer, shared by the slots. Each
modality adds a learned type embedding to its tokens; a subject lacking a modality gets that
modality's learned "absent" tokens instead, so the language model can tell, and every row of a
batch has the same number of soft tokens. Modalities are concatenated in a fixed order.

What a modality's tokens are made from (``inputs``) is the caller's choice: :class:`BridgeAdapters`
feeds the raw vector beside its aligned (contrastive-stage) embedding, as LLaVA feeds CLIP
features rather than pixels. Every soft token is scaled to ``token_norm``, the typical norm of
the language model's own token embeddings, so that from the first step the LLM reads the prefix
at the scale of the words around it (an unscaled projector starts at an arbitrary scale the frozen
LLM has never seen, and spends most of a short training run finding the right one).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrefixProjector"]


class PrefixProjector(nn.Module):
    """``{modality: (n, d_m)}`` -> ``(n, k * n_modalities, hidden_size)`` soft prefix tokens.

    Parameters
    ----------
    modality_dims
        Modality name -> width of its vectors; the order fixes the order of the token blocks.
    hidden_size
        The language model's hidden size.
    tokens
        ``k``, the soft tokens per modality.
    token_norm
        The L2 norm every soft token is scaled to (learned from this start); set it to the
        backbone's mean token-embedding norm.
    """

    def __init__(
        self, modality_dims: Mapping[str, int], hidden_size: int, *, tokens: int = 8, token_norm: float = 1.0
    ) -> None:
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
        self.log_norm = nn.Parameter(torch.tensor(float(token_norm)).log())

    @property
    def n_tokens(self) -> int:
        """Soft tokens per subject: ``tokens`` for each modality."""
        return self.tokens * len(self.modalities)

    def forward(self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Soft tokens for a batch, absent modalities replaced by their learned "absent" tokens.

        Parameters
        ----------
        inputs
            Modality -> ``(n, d_m)``; rows of absent subjects are ignored (they may hold zeros or NaN).
        present
            Modality -> ``(n,)`` bool: who has modality ``m``.

        Returns
        -------
        torch.Tensor
            ``(n, n_tokens, hidden_size)``.
        """
        blocks = []
        for modality in self.modalities:
            x = torch.nan_to_num(inputs[modality])
            tokens = self.mix(self.act(self.expand[modality](x).view(len(x), self.tokens, self.hidden_size)))
            tokens = tokens + self.type_embedding[modality]
            mask = present[modality].view(-1, 1, 1).to(tokens.dtype)
            blocks.append(mask * tokens + (1 - mask) * self.absent[modality])
        return F.normalize(torch.cat(blocks, dim=1), dim=-1) * self.log_norm.exp()
