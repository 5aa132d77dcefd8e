"""BackboneConfig: which text backbone to load, from where, and in which precision."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from neuroomics_bridge.errors import ConfigError
from neuroomics_bridge.yamlconfig import YamlConfig, check_choice

__all__ = ["DEFAULT_BACKBONE", "BackboneConfig", "DType", "Kernel", "Pooling", "Quantize"]

DType = Literal["auto", "bfloat16", "float16", "float32"]
Quantize = Literal["none", "int8"]
Pooling = Literal["mean", "last"]
Kernel = Literal["auto", "aten", "onednn", "packed", "bf16-copy"]
"""How a CPU model's linear layers run single-token-row forwards (decoding steps): ``"auto"``
times ``"aten"``, ``"onednn"`` and ``"packed"`` on this machine
(:func:`~neuroomics_bridge.backbone.hardware.single_row_kernel`); they compute the same thing.
``"bf16-copy"``, for float32 models only, is an opt-in that changes what is computed: single rows
read a bf16 copy of the weights (:attr:`~neuroomics_bridge.backbone.packed.PackedLinear.row_dtype`),
half the bytes, so greedy text can differ from the float32 model's (README, "Performance")."""

DEFAULT_BACKBONE = "smollm2-135m-instruct"
"""The bundled backbone (SmolLM2-135M-Instruct): what loads when no other is named."""


@dataclasses.dataclass
class BackboneConfig(YamlConfig):
    """Which text backbone to load, from where, and in which precision.

    Load it with :meth:`TextBackbone.from_config`.

    Parameters
    ----------
    name
        A registry id (see ``nob cards``), a local Hugging Face directory or a ``.gguf`` file.
    local_dir
        Points a gated registry entry at weights on disk (else ``$NOB_MODEL_DIR/<id>`` is tried).
    dtype
        ``"auto"``: on a CPU bf16 where it runs natively, else float32; on a GPU the card's
        release half type (see :func:`~neuroomics_bridge.backbone.hardware.default_dtype`).
    device
        ``"auto"`` picks CUDA when present.
    quantize
        ``"int8"``: int8 weight-only linear layers for CPU inference (opt-in; see
        :meth:`TextBackbone.from_pretrained`).
    compile_decoding
        Decode with a static cache and ``torch.compile`` (opt-in; see :meth:`TextBackbone.generate`).
    kernel
        ``"auto"`` times the single-row kernels on this CPU; ``"aten"``, ``"onednn"`` or
        ``"packed"`` forces one; ``"bf16-copy"`` decodes a float32 model through a bf16 copy of
        its weights (opt-in; see :data:`Kernel`).

    Raises
    ------
    ConfigError
        On an unknown ``dtype``, ``quantize`` or ``kernel``, or an empty ``name``.
    """

    name: str = DEFAULT_BACKBONE
    local_dir: str | None = None
    dtype: DType = "auto"
    device: str = "auto"
    quantize: Quantize = "none"
    compile_decoding: bool = False
    kernel: Kernel = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("BackboneConfig", "dtype", self.dtype, get_args(DType))
        check_choice("BackboneConfig", "quantize", self.quantize, get_args(Quantize))
        check_choice("BackboneConfig", "kernel", self.kernel, get_args(Kernel))
        if not self.name:
            raise ConfigError("BackboneConfig.name: expected a registry id or a path, got ''")
