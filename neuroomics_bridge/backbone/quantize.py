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

For a float32 model the kernel's activations are float32 or bf16, whichever
:func:`int8_kernel_dtype` times faster here: on an AMD EPYC with AVX2 alone (Zen 3, 2 threads)
the kernel took 110 ms for one token row through the default backbone's layers in float32 and
20.5 ms in bf16 (2026-12-06), so float32 int8 decoding there ran at half plain ``transformers``'
speed. Inside ``torch.compile`` (``compile_decoding=True``) the kernel is called through the
registered op ``neuroomics_bridge::int8_mm``, which the graph runs as an opaque call: Inductor's own
lowering of ``_weight_int8pack_mm`` refused the cast activations it was handed (an
``AssertionError`` at compile time on the AVX2 AMD EPYC, 2026-12-06, so int8 with compiled
decoding fell back to eager decoding there).
"""

from __future__ import annotations

import functools
from typing import Self

import torch
from torch import nn

from neuroomics_bridge.backbone.calibration import calibrated_choice, random_rows, run_rows
from neuroomics_bridge.errors import ConfigError

__all__ = ["Int8Linear", "int8_kernel_dtype", "quantize_int8"]

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
    kernel_dtype
        The dtype the kernel's activations are cast to (its output is cast back); ``None``: the
        input's own.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        max_kernel_rows: int,
        kernel_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.max_kernel_rows = max_kernel_rows
        self.kernel_dtype = kernel_dtype
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
        if rows.shape[0] <= self.max_kernel_rows:
            dtype = rows.dtype if self.kernel_dtype is None else self.kernel_dtype
            kernel = torch.ops.neuroomics_bridge.int8_mm if torch.compiler.is_compiling() else torch._weight_int8pack_mm
            out = kernel(rows.to(dtype).contiguous(), self.weight, self.scale.to(dtype)).to(rows.dtype)
        else:  # x @ (s q)^T = (x @ q^T) s: one int8 -> float pass over the weight, the scale on the output
            out = nn.functional.linear(rows, self.weight.to(rows.dtype)) * self.scale.to(rows.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = "" if self.kernel_dtype is None else f", kernel activations {self.kernel_dtype}"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only{kernel}"


_OPS = torch.library.Library("neuroomics_bridge", "FRAGMENT")  # the namespace backbone.packed defines
_OPS.define("int8_mm(Tensor x, Tensor weight, Tensor scale) -> Tensor")


@torch.library.impl(_OPS, "int8_mm", "CPU")
def int8_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``torch._weight_int8pack_mm(x, weight, scale)``, as the op ``neuroomics_bridge::int8_mm``: an
    opaque call inside compiled graphs (see the module docstring)."""
    return torch._weight_int8pack_mm(x, weight, scale)


@torch.library.register_fake("neuroomics_bridge::int8_mm", lib=_OPS)
def _(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def int8_kernel_dtype(model: nn.Module) -> torch.dtype:
    """The activation dtype the int8 kernel runs fastest in for ``model``'s :class:`Int8Linear` layers.

    A bf16 or float16 model's own dtype, untimed. For a float32 model, one token row through
    every int8 layer is timed with float32 and with bf16 activations (once per CPU, library
    versions and layer shapes, then cached: :func:`~neuroomics_bridge.backbone.calibration.calibrated_choice`).
    bf16 activations add a rounding of each input row (relative error below 2**-8, about an int8
    step); README ("Performance") gives what int8 costs with it.
    """
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    dtype = layers[0].scale.dtype if layers else torch.float32
    if not layers or dtype != torch.float32:
        return dtype
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    copies = {  # sharing the model's buffers: its own layers are left as they are
        name: [Int8Linear(m.weight, m.scale, m.bias, max_kernel_rows=1, kernel_dtype=dtype) for m in layers]
        for name, dtype in dtypes.items()
    }
    rows = random_rows((m.in_features for m in layers), 1, torch.float32)
    shapes = sorted({(m.in_features, m.out_features) for m in layers})
    choice = calibrated_choice(
        "int8-kernel-activations",
        {name: functools.partial(run_rows, copies[name], rows) for name in dtypes},
        context={"dtype": "torch.float32", "linears": f"{len(layers)}:{shapes}"},
        repeats=5,
    )
    return dtypes[choice]


def quantize_int8(
    model: nn.Module, *, max_kernel_rows: int = MAX_KERNEL_ROWS, kernel_dtype: torch.dtype | None = None
) -> int:
    """Replace every ``nn.Linear`` of a CPU model by an :class:`Int8Linear`, in place.

    In place because the point is memory: a copy would hold both weights at once. A tied output
    head gets its own int8 copy (the input embeddings stay as they are).

    Parameters
    ----------
    model
        A model on the CPU, for inference (the int8 layers have no trainable weight).
    max_kernel_rows
        Largest ``batch * sequence`` row count that runs the int8 kernel (see :class:`Int8Linear`).
    kernel_dtype
        The kernel's activation dtype; ``None``: :func:`int8_kernel_dtype`'s choice for the model.

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
    for name, linear in linears:  # all checked before any is replaced: a refused model stays as it was
        if linear.weight.device.type != "cpu":
            raise ConfigError(
                f"quantize='int8': expected every linear layer on the cpu, {name} is on {linear.weight.device}"
            )
    for name, linear in linears:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Int8Linear.from_linear(linear, max_kernel_rows=max_kernel_rows))
    chosen = int8_kernel_dtype(model) if kernel_dtype is None else kernel_dtype
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.kernel_dtype = chosen
    return len(linears)
