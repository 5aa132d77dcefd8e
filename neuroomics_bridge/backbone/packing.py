"""Padding-free training forwards: a right-padded batch runs as one sequence of its real tokens.

A right-padded batch spends every linear layer, norm and MLP on its padding too (17% of the
prefix stage's tokens on the demo, 22% of the shipped instruction records'). Here the real
tokens of all rows are concatenated into one ``(1, n_real)`` sequence, each row's positions
counting from 0 again, so those layers see real tokens only. Attention, the one place where rows
must not see each other, goes through a transformers attention function registered as
:data:`PACKED_ATTENTION`: it runs transformers' own kernel (SDPA or eager, whichever the model
was set to) on each row's slice of the packed queries, keys and values, causal within the row,
so a batch's attention costs the sum of its rows' squared lengths rather than rows times the
longest row's square. Inside ``torch.compile`` (where a loop over the rows would be traced anew
for every set of lengths) it instead lays them back out as the padded ``(rows, longest)`` batch
and attends there under the padded batch's causal mask, one graph for every batch. Either way
the loss and the gradients are the padded batch's (to float rounding), while a step costs what
its real tokens cost: 1.13-1.25x shorter prefix-stage steps in float32 on one thread of an AVX2
AMD EPYC (README, "Performance").

:func:`pack_inputs` applies only where this is exact: right padding with at least one padded
position, a model that dispatches attention through transformers' ``AttentionInterface``, full
causal attention in every layer (no sliding window), and SDPA or eager attention; everything
else runs padded, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "PACKED_ATTENTION",
    "PackedRows",
    "attention_implementation",
    "pack_inputs",
    "packed_attention",
    "packed_forward",
    "padded_output",
]

PACKED_ATTENTION = "neuroomics_bridge_packed"
"""The name :func:`packed_attention` is registered under in transformers' ``AttentionInterface``."""
INNER_ATTENTION = ("sdpa", "eager")
"""The attention implementations a packed forward can run its padded attention with."""


@dataclasses.dataclass(frozen=True, eq=False)
class PackedRows:
    """Where a padded batch's real tokens sit in its packed sequence, and its attention mask.

    Attributes
    ----------
    real
        ``(n_real,)`` flat indices of the real positions in the ``(rows * longest)`` layout, in
        row order: the packed sequence is the padded batch at these positions.
    lengths
        Each row's number of real tokens, in row order: its slice of the packed sequence.
    gather
        ``(rows * longest,)`` the packed index of every padded position (padding: 0, which
        the mask hides from every real query), for the padded attention of compiled graphs.
    mask
        ``(rows, 1, longest, longest)`` the padded batch's causal mask in the format of
        ``attention`` (boolean for SDPA, additive for eager); its top-left ``length`` square
        is a row's own causal mask.
    attention
        The implementation attention runs with (one of :data:`INNER_ATTENTION`).
    """

    real: torch.Tensor
    lengths: tuple[int, ...]
    gather: torch.Tensor
    mask: torch.Tensor
    attention: str

    @property
    def rows(self) -> int:
        """Rows of the padded batch."""
        return self.mask.shape[0]

    @property
    def longest(self) -> int:
        """Length of the padded batch (its longest row)."""
        return self.mask.shape[-1]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(rows, longest, ...)`` values of the padded batch -> ``(n_real, ...)``, in row order."""
        return padded.reshape(self.rows * self.longest, *padded.shape[2:])[self.real]

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """``(n_real, ...)`` values of the packed sequence -> ``(rows, longest, ...)``, zero at padding."""
        padded = packed.new_zeros(self.rows * self.longest, *packed.shape[1:]).index_copy(0, self.real, packed)
        return padded.view(self.rows, self.longest, *packed.shape[1:])


def pack_inputs(model: torch.nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The decoder inputs of a right-padded batch as one packed row, or ``None`` where packing
    would not be exact (see the module docstring) or saves nothing (no padding).

    Parameters
    ----------
    model
        The causal LM (or its decoder) the inputs are for.
    inputs
        Its keyword inputs: ``input_ids`` or ``inputs_embeds``, ``attention_mask`` (2-D, 1 for
        real tokens), and others that pass through (``use_cache`` ...).

    Returns
    -------
    dict or None
        The packed inputs: ``(1, n_real)`` ids or ``(1, n_real, hidden)`` embeddings, per-row
        ``position_ids``, no mask, and ``packed_rows`` (a :class:`PackedRows`: where each real
        token came from, to pad the outputs again).
    """
    mask = inputs.get("attention_mask")
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if mask is None or mask.ndim != 2 or attention not in INNER_ATTENTION or not _full_causal(model):
        return None
    if {"position_ids", "cache", "past_key_values", "packed_rows"} & inputs.keys():
        return None
    lengths = mask.bool().sum(1)  # masks of 0/1 floats count alike
    rows, longest = mask.shape
    positions = torch.arange(longest, device=mask.device)
    real_positions = positions[None, :] < lengths[:, None]
    if not bool((mask.bool() == real_positions).all()) or bool((lengths == longest).all()) or not bool(lengths.all()):
        return None  # left padding, or no padding to save, or an empty row
    real = torch.nonzero(real_positions.reshape(-1))[:, 0]
    starts = torch.cumsum(lengths, 0) - lengths
    gather = torch.where(real_positions, starts[:, None] + positions[None, :], 0).reshape(-1)
    keep = (positions[:, None] >= positions[None, :])[None, None] & real_positions[:, None, None, :]
    if attention == "sdpa":
        attention_mask = keep
    else:  # eager attention adds its mask to the scores
        dtype = _float_dtype(model, inputs)
        attention_mask = torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(
            ~keep, torch.finfo(dtype).min
        )
    packing = PackedRows(
        real=real, lengths=tuple(lengths.tolist()), gather=gather, mask=attention_mask, attention=attention
    )
    packed = {key: value for key, value in inputs.items() if key != "attention_mask"}
    for key in ("input_ids", "inputs_embeds"):
        if inputs.get(key) is not None:
            packed[key] = packing.pack(inputs[key])[None]
    packed["position_ids"] = packing.pack(positions.expand(rows, longest))[None]
    packed["packed_rows"] = packing
    return packed


def padded_output(
    model: torch.nn.Module, forward: Callable[[Mapping[str, Any]], torch.Tensor], inputs: Mapping[str, Any]
) -> torch.Tensor:
    """``forward(inputs)``, a right-padded batch run packed where :func:`pack_inputs` finds that
    exact and ``model`` can switch to :func:`packed_attention`, its output padded back (zero at
    padding); otherwise run as given.

    Parameters
    ----------
    model
        The model ``forward`` runs (whose attention is switched).
    forward
        Runs the model on keyword inputs; returns ``(batch, length, ...)`` values.
    inputs
        The keyword inputs, as :func:`pack_inputs` takes them.

    Returns
    -------
    torch.Tensor
        ``(batch, length, ...)``, as ``forward(inputs)`` returns them.
    """
    packed = pack_inputs(model, inputs)
    if packed is not None:
        with packed_forward(model) as switched:
            if switched:
                return packed["packed_rows"].pad(forward(packed)[0])
    return forward(inputs)


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, implementation: str) -> Iterator[None]:
    """Run ``model`` with ``implementation`` (``"sdpa"``, ``"eager"`` ...) inside the block only."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@contextlib.contextmanager
def packed_forward(model: torch.nn.Module) -> Iterator[bool]:
    """Inside the block, ``model`` attends through :func:`packed_attention`; yields whether it
    could be switched (a model that does not use transformers' ``AttentionInterface`` cannot)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    with attention_implementation(model, PACKED_ATTENTION):
        yield model.config._attn_implementation == PACKED_ATTENTION


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    packed_rows: PackedRows,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a packed row (a transformers attention function): ``(1, heads, n_real,
    head_dim)`` queries, keys and values, attended by ``packed_rows.attention`` one row at a
    time (or, while ``torch.compile`` traces, as the padded batch: see the module docstring),
    returned as ``(1, n_real, heads, head_dim)``. ``attention_mask`` is ``None`` (transformers
    builds none for a custom implementation) and is not used."""
    inner = _inner_attention(module, packed_rows.attention)
    if torch.compiler.is_compiling():
        rows, longest = packed_rows.rows, packed_rows.longest

        def padded(states: torch.Tensor) -> torch.Tensor:
            heads, head_dim = states.shape[1], states.shape[3]
            return states[0][:, packed_rows.gather].view(heads, rows, longest, head_dim).transpose(0, 1)

        output, _ = inner(module, padded(query), padded(key), padded(value), packed_rows.mask, **kwargs)
        return packed_rows.pack(output)[None], None
    outputs, start = [], 0
    for row, length in enumerate(packed_rows.lengths):
        span = slice(start, start + length)
        # SDPA without a mask attends causally (its fastest kernel); eager needs the causal mask,
        # which is the padded mask's corner for this row
        mask = None if packed_rows.attention == "sdpa" else packed_rows.mask[row : row + 1, :, :length, :length]
        output, _ = inner(module, query[:, :, span], key[:, :, span], value[:, :, span], mask, **kwargs)
        outputs.append(output)
        start += length
    return torch.cat(outputs, dim=1), None


def _inner_attention(module: torch.nn.Module, attention: str) -> Any:
    """transformers' SDPA function, or the eager one that ``module``'s modelling file defines
    (transformers keeps a model's eager attention beside its attention class, not in the registry)."""
    if attention == "sdpa":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"]
    return sys.modules[type(module).__module__].eager_attention_forward


def _full_causal(model: torch.nn.Module) -> bool:
    """Whether every layer of ``model`` attends causally to all earlier tokens (no sliding window,
    no chunked or bidirectional layers): what the padded mask of :func:`pack_inputs` encodes."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    windowed = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    attention_chunk = getattr(config, "attention_chunk_size", None)
    return set(layer_types) == {"full_attention"} and not windowed and attention_chunk is None


def _float_dtype(model: torch.nn.Module, inputs: Mapping[str, Any]) -> torch.dtype:
    """The dtype attention scores are in: the embeddings', or the model's."""
    embeds = inputs.get("inputs_embeds")
    if embeds is not None:
        return embeds.dtype
    return next(model.parameters()).dtype
