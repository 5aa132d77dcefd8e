"""Linear layers that multiply through a oneDNN-prepacked copy of their weight in inference.

oneDNN reorders a weight matrix into the blocked layout its CPU kernels read fastest. A plain
``F.linear`` call hands it the row-major weight, and for a few token rows (decoding) that layout
makes it stream the weight at about two thirds of the speed it reaches on a prepacked copy:
measured on an Intel Xeon with AMX, 2 threads, all 211 linear layers of the default backbone on
one token row took 16.9 ms prepacked against 24.9 ms through oneDNN and 27.6 ms through ATen
(``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``, the ops PyTorch's own
compiler uses for frozen CPU weights). :class:`PackedLinear` keeps the weight as the layer's
parameter, so training, saving, hashing and LoRA see an ordinary ``nn.Linear``, and adds the
packed copy for forwards that need no gradient. The copy costs as much memory as the weight. It
is rebuilt when the weight is replaced or updated in place (optimisers bump its version counter);
a change made through ``weight.data`` is invisible to both checks, so code that does that (peft's
LoRA merge) calls :func:`drop_packed_weights` after it, as ``TextBackbone.mark_weights_changed``
and ``training.instruct.merge_lora`` do.

Compiled graphs cannot hold oneDNN's opaque packed tensors, so inside ``torch.compile`` a layer
calls the registered op ``neuroomics_bridge::packed_linear``, which the graph runs as an opaque
call: it fetches the layer's packed copy at run time (packing again if the weight changed), so
compiled decoding reads the same copy as eager decoding, with no second copy per graph and
nothing baked into the graph that could go stale.

Layers of one module that always read the same input (a LLaMA block's query, key and value
projections; its MLP's gate and up projections: :data:`SIBLING_LAYERS`) are packed as one stacked
matrix, so a decoding step makes one oneDNN call where it made three or two. Each such call costs
about 19 µs before it reads a byte (measured on the Intel Xeon: a 64 x 64 layer takes as long as
a 576 x 576 one), so stacking takes the default backbone's 211 single-row calls to 121 and its
linear layers from 19.3 to 17.0 ms a token. The first sibling called multiplies the stack and
keeps the others' slices until they are called with the same input. Inputs of many rows (prefill,
encoding) take the plain layers instead (:data:`STACKED_ROWS_MAX`).

A float32 model can also decode through a bf16 copy of its weights (``pack_linear_weights(model,
row_dtype=torch.bfloat16)``, ``TextBackbone(kernel="bf16-copy")``): single token rows are cast to
bf16, multiplied by the copy (packed where oneDNN can pack bf16, plain elsewhere) and cast back,
so a decoding step reads half the bytes; every larger input takes the float32 weights. On an AMD
EPYC with AVX2 alone (Zen 3, 2 threads), where oneDNN cannot pack bf16 and float32 is the model's
dtype, one token row through the default backbone's 211 linear layers took 18.0 ms on plain bf16
weights against 28.9 ms on packed float32 ones (2026-12-06), while 64 rows took 5x longer in bf16.
It rounds each layer's input and weight to bf16, so greedy text can differ from the float32
model's: an opt-in (README, "Performance").
"""

from __future__ import annotations

import weakref
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "COPY_ROWS_MAX",
    "SIBLING_LAYERS",
    "PACKABLE_DTYPES",
    "STACKED_ROWS_MAX",
    "PackedLinear",
    "drop_packed_weights",
    "pack_linear_weights",
    "packed_linear",
    "stack_siblings",
]

SIBLING_LAYERS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Names of linear layers that one module (LLaMA-family attention, MLP) always calls on the same input."""

STACKED_ROWS_MAX = 64
"""Most input rows that siblings multiply as one stack: decoding steps, up to the 64 rows reports
are decoded in. On more rows (prefill, encoding) the stacked matmul is still faster, but its
strided slices slow the attention and MLP after them: encoding 64 texts (Intel Xeon, AMX, 2
cores) took 2–7% longer stacked than per layer in three runs, and for that many rows oneDNN reads
the plain weight about as fast as a packed one, so those rows take the plain layers."""

COPY_ROWS_MAX = 1
"""Most input rows that read a layer's copy in another dtype (:attr:`PackedLinear.row_dtype`):
decoding one prompt. Larger inputs take the float32 weights, since where bf16 is the copy's dtype
because the CPU runs float32 models, it also runs bf16 matmuls of many rows slowly (emulated)."""

PACKABLE_DTYPES = frozenset(
    dtype
    for dtype, packable in (
        (torch.float32, True),
        (torch.bfloat16, torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        (torch.float16, torch.ops.mkldnn._is_mkldnn_fp16_supported()),
    )
    if packable
)
"""The weight dtypes oneDNN can prepack on this CPU: float32 always; bf16 and float16 only with the
instructions its packed kernels need (AVX512BW/VL/DQ or AVX-NE-CONVERT), so not on an AMD EPYC
with AVX2 alone (Zen 3), where packing bf16 raises."""


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose gradient-free CPU forwards use a oneDNN-prepacked weight.

    Forwards that need a gradient (training, LoRA on top), that run on another device or dtype or
    under autocast, or whose weight dtype this CPU cannot pack (:data:`PACKABLE_DTYPES`), take the
    plain ``nn.Linear`` path; the results agree up to float rounding. With :attr:`row_dtype` set,
    gradient-free forwards of at most :data:`COPY_ROWS_MAX` rows read a copy of the weight in that
    dtype instead (packed where this CPU can pack it), and every other forward takes the plain path.
    """

    _packed: torch.Tensor | None = None
    _packed_from: tuple[int, int] | None = None  # (storage address, version) of the weight packed
    _layer_key: int  # this layer's key in _LAYERS, what compiled graphs pass to packed_linear
    _siblings: _Siblings | None = None  # the stack this layer is packed in, if any
    row_dtype: torch.dtype | None = None
    """The dtype of the copy single rows read, where it is not the weight's (:func:`pack_linear_weights`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _register(self)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Self:
        """A :class:`PackedLinear` holding the same weight and bias parameters as ``linear`` (no copy)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight  # one module attribute lookup: this runs ~200 times per decoded token
        plain = (
            (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            or not x.is_cpu
            or x.dtype != weight.dtype
            or torch.is_autocast_enabled("cpu")
            or (
                weight.dtype not in PACKABLE_DTYPES
                if self.row_dtype is None
                else x.numel() > COPY_ROWS_MAX * x.shape[-1]
            )
        )
        if plain:
            return super().forward(x)
        if torch.compiler.is_compiling():  # an opaque call that reaches _packed_forward when the graph runs
            return torch.ops.neuroomics_bridge.packed_linear(x, weight, self.bias, self._layer_key)
        return self._packed_forward(x)

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._siblings is not None and (out := self._siblings.forward(self, x)) is not None:
            return out
        return _multiply(x, self.packed_weight(), self.bias)

    def __getstate__(self) -> dict:
        """``copy.deepcopy`` (and pickling) leave the packed copy out (oneDNN's opaque tensors have
        no storage to copy); the new layer packs its own at its first use."""
        state = dict(super().__getstate__())
        state["_packed"] = state["_packed_from"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        _register(self)  # a copy is a layer of its own

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's blocked layout (in :attr:`row_dtype`, if set; plain where this CPU
        cannot pack that dtype), made again whenever the weight has changed."""
        source = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed_from != source:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
                self._packed = _inference_copy(self.weight.detach(), self.row_dtype)
            self._packed_from = source
        return self._packed


class _Siblings:
    """Linear layers that read one input, multiplied as one stacked, packed matrix.

    The first member called on an input multiplies the whole stack and returns its own slice;
    the others' slices wait for them, valid while the input is the same tensor (unchanged) and
    no weight has changed since.
    """

    def __init__(self, layers: list[PackedLinear]) -> None:
        self.layers = layers
        self.widths = [layer.out_features for layer in layers]
        self._packed: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._packed_from: list | None = None
        self._parameter_dicts: list[dict] | None = None  # each layer's own parameter dict
        self._drop_waiting()

    def __getstate__(self) -> dict:
        """Copies leave the packed stack and waiting slices out, as :class:`PackedLinear` does."""
        return {"layers": self.layers, "widths": self.widths}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.drop()

    def drop(self) -> None:
        """Forget the packed stack and any waiting slices."""
        self._packed = self._packed_from = self._parameter_dicts = None
        self._drop_waiting()

    def _drop_waiting(self) -> None:
        self._input: torch.Tensor | None = None
        self._waiting: dict[int, torch.Tensor] = {}
        self._waiting_for: tuple | None = None

    def _state(self, x: torch.Tensor) -> tuple:
        """What the slices computed from ``x`` depend on: the parameters' storage and versions, and
        ``x``'s version. Inference tensors have no version, so an in-place change to ``x`` between
        two sibling calls inside ``torch.inference_mode`` would go unseen; the blocks of
        :data:`SIBLING_LAYERS` call their siblings back to back on one unchanged input."""
        if self._parameter_dicts is None:  # read directly: Module.__getattr__ would cost more than a saved call
            self._parameter_dicts = [layer._parameters for layer in self.layers]
        parameters = [(p.data_ptr(), p._version) for d in self._parameter_dicts for p in d.values() if p is not None]
        return parameters, None if x.is_inference() else x._version

    def forward(self, layer: PackedLinear, x: torch.Tensor) -> torch.Tensor | None:
        """``layer``'s output, from the stack; ``None`` for a layer that is not one of it (a
        shallow ``copy.copy`` of a member shares this stack but computes on its own)."""
        if x.numel() > STACKED_ROWS_MAX * x.shape[-1]:  # (row_dtype layers never send more than COPY_ROWS_MAX)
            return F.linear(x, layer.weight, layer.bias)
        try:
            index = self.layers.index(layer)
        except ValueError:
            return None
        state = self._state(x)
        if self._input is x and self._waiting_for == state and index in self._waiting:
            out = self._waiting.pop(index)
            if not self._waiting:
                self._drop_waiting()
            return out
        weight, bias = self._packed_stack(state[0])
        stacked = _multiply(x, weight, bias)
        slices = stacked.split(self.widths, dim=-1)
        self._input, self._waiting_for = x, state
        self._waiting = {i: part for i, part in enumerate(slices) if i != index}
        return slices[index]

    def _packed_stack(self, parameters: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stacked weight, packed (as :meth:`PackedLinear.packed_weight`), and the stacked bias
        (or ``None``), rebuilt when ``parameters`` moved."""
        if self._packed is None or self._packed_from != parameters:
            with torch.inference_mode(False), torch.no_grad():
                row_dtype = self.layers[0].row_dtype
                weight = _inference_copy(torch.cat([layer.weight.detach() for layer in self.layers]), row_dtype)
                biases = [layer.bias.detach() for layer in self.layers if layer.bias is not None]
                self._packed = (weight, torch.cat(biases) if biases else None)
            self._packed_from = parameters
        return self._packed


def _inference_copy(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``weight`` in ``dtype`` (``None``: its own), in oneDNN's packed layout where this CPU can pack
    that dtype, else as a contiguous plain tensor."""
    weight = weight if dtype is None else weight.to(dtype)
    return torch.ops.mkldnn._reorder_linear_weight(weight) if weight.dtype in PACKABLE_DTYPES else weight.contiguous()


def _multiply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for an :func:`_inference_copy` ``weight``, computed in the copy's
    dtype, the result in ``x``'s."""
    dtype = x.dtype
    if dtype != weight.dtype:
        x = x.to(weight.dtype)
        bias = None if bias is None else bias.to(weight.dtype)
    if weight.is_mkldnn:
        out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    else:
        out = F.linear(x, weight, bias)
    return out if out.dtype == dtype else out.to(dtype)


_LAYERS: weakref.WeakValueDictionary[int, PackedLinear] = weakref.WeakValueDictionary()
"""Every live :class:`PackedLinear` by its key, for :func:`packed_linear` to find at run time."""


def _register(layer: PackedLinear) -> None:
    layer._layer_key = id(layer)
    _LAYERS[layer._layer_key] = layer


_OPS = torch.library.Library("neuroomics_bridge", "DEF")  # the plain dispatcher route: ~4 µs a call less than custom_op
_OPS.define("packed_linear(Tensor x, Tensor weight, Tensor? bias, int layer) -> Tensor")


@torch.library.impl(_OPS, "packed_linear", "CPU")
def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the prepacked copy of the :class:`PackedLinear` keyed ``layer``.

    The op ``neuroomics_bridge::packed_linear``: an opaque call inside compiled graphs, so the
    packed copy is looked up (and repacked if ``weight`` changed) when the graph runs, not when
    it is traced.
    """
    # weight and bias are the layer's own (the graph's inputs); a sibling's slice is a strided view,
    # and the graph was traced for the contiguous result the fake below promises
    return _LAYERS[layer]._packed_forward(x).contiguous()


@torch.library.register_fake("neuroomics_bridge::packed_linear", lib=_OPS)
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def pack_linear_weights(model: nn.Module, *, row_dtype: torch.dtype | None = None) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`PackedLinear`, in place.

    The parameters stay the same objects (tied weights stay tied, state-dict keys do not change);
    each layer packs its weight at its first gradient-free forward. Siblings (:data:`SIBLING_LAYERS`,
    children of one module with the same input width, dtype and bias or none) are packed as one
    stack. Calling it again does nothing.

    Parameters
    ----------
    model
        The model whose linear layers are replaced.
    row_dtype
        Where given and not a layer's weight dtype, that layer's forwards of at most
        :data:`COPY_ROWS_MAX` rows read a copy of its weight in this dtype
        (:attr:`PackedLinear.row_dtype`), and every other forward its plain weight.

    Returns
    -------
    int
        How many layers were replaced.
    """
    linears = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    for name, linear in linears:
        parent, _, child = name.rpartition(".")
        layer = PackedLinear.from_linear(linear)
        if row_dtype not in (None, linear.weight.dtype):
            layer.row_dtype = row_dtype
        setattr(model.get_submodule(parent), child, layer)
    if linears:
        stack_siblings(model)
    return len(linears)


def stack_siblings(model: nn.Module) -> None:
    """Pack each set of sibling :class:`PackedLinear` layers of ``model`` (:data:`SIBLING_LAYERS`:
    children of one module with the same input width, dtype, row dtype, device and bias or none)
    as one stack, in place; layers already stacked are left as they are."""
    for module in model.modules():
        for names in SIBLING_LAYERS:
            layers = [getattr(module, name, None) for name in names]
            if not all(isinstance(layer, PackedLinear) and layer._siblings is None for layer in layers):
                continue
            first = layers[0].weight
            if all(
                layer.in_features == layers[0].in_features
                and layer.weight.dtype == first.dtype
                and layer.row_dtype == layers[0].row_dtype
                and layer.weight.device == first.device
                and (layer.bias is None) == (layers[0].bias is None)
                for layer in layers
            ):
                siblings = _Siblings(layers)
                for layer in layers:
                    layer._siblings = siblings


def drop_packed_weights(model: nn.Module) -> None:
    """Forget every packed copy in ``model`` (each is rebuilt from the weight at its next use)."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module._packed = module._packed_from = None
            if module._siblings is not None:
                module._siblings.drop()
