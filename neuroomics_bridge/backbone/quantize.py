"""Weight-only int8 linear layers: half the weight bytes per decoded token, for CPU inference.

Batch-1 decoding reads every weight matrix once per token, so its speed is set by how many
bytes the weights take. :func:`quantize_int8` stores each linear layer's weight as int8 with one
scale per output row (symmetric, round to nearest: ``w ≈ scale * q``, ``|q| <= 127``) and
multiplies a few token rows with PyTorch's own weight-only int8 kernel
(``torch._weight_int8pack_mm``); larger inputs (prefill, encoding) convert the codes to the
activation dtype (exactly: ``|q| <= 127``), run the usual matmul and scale its output. Measured
on an Intel Xeon with AMX, 2 threads: the int8 kernel's time grows with the row count (it
streams the weight once per row), so it wins up to about 16 rows for the model's layers and
about 100 for the LM head; :data:`MAX_KERNEL_ROWS` is the default cut. It is an opt-in
(``TextBackbone.from_pretrained(..., quantize="int8")``): greedy text can differ from the bf16
model's, and README ("Performance") states by how much.
"""

from __future__ import annotations

from typing import Self

import torch
from torch import nn

from neuroomics_bridge.errors import ConfigError

__all__ = ["Int8Linear", "quantize_int8"]

INT8_MAX = 127
MAX_KERNEL_ROWS = 8
"""Inputs of at most this many token rows run the int8 kernel (see the module docstring)."""


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with a per-output-row scale; inference only.

    Parameters
    ----------
    weight
        ``(out_features, in_features)`` int8 codes.
    scale
        ``(out_features,)`` scales in the dtype the layer computes in (``w = scale * weight``).
    bias
        The float bias, or ``None``.
    max_kernel_rows
        Inputs of at most this many token rows run the int8 kernel; larger ones dequantise.
    """

    def __init__(
        self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *, max_kernel_rows: int
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.max_kernel_rows = max_kernel_rows
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, max_kernel_rows: int = MAX_KERNEL_ROWS) -> Self:
        """Quantise ``linear``'s weight (left unchanged) to int8 codes and scales in its dtype."""
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / INT8_MAX
        codes = torch.round(weight / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(codes, scale.to(linear.weight.dtype), bias, max_kernel_rows=max_kernel_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = self.scale.to(rows.dtype)
        if rows.shape[0] <= self.max_kernel_rows:
            out = torch._weight_int8pack_mm(rows.contiguous(), self.weight, scale)
        else:  # x @ (s q)^T = (x @ q^T) s: one int8 -> float pass over the weight, the scale on the output
            out = nn.functional.linear(rows, self.weight.to(rows.dtype)) * scale
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_int8(model: nn.Module, *, max_kernel_rows: int = MAX_KERNEL_ROWS) -> int:
    """Replace every ``nn.Linear`` of a CPU model by an :class:`Int8Linear`, in place.

    In place because the point is memory: a copy would hold both weights at once. A tied output
    head gets its own int8 copy (the input embeddings stay as they are).

    Parameters
    ----------
    model
        A model on the CPU, for inference (the int8 layers have no trainable weight).
    max_kernel_rows
        Largest ``batch * sequence`` row count that runs the int8 kernel (see :class:`Int8Linear`).

    Returns
    -------
    int
        How many layers were replaced.

    Raises
    ------
    ConfigError
        When a linear layer is not on the CPU (the kernel is a CPU path here).
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, linear in linears:
        if linear.weight.device.type != "cpu":
            raise ConfigError(
                f"quantize='int8': expected every linear layer on the cpu, {name} is on {linear.weight.device}"
            )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Int8Linear.from_linear(linear, max_kernel_rows=max_kernel_rows))
    return len(linears)
