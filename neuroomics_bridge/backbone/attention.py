"""Which attention implementation the backbone trains with, chosen by timing it here.

Training through the frozen backbone (the prefix stage's LM loss) runs short rows, a few hundred
tokens at most, forward and backward. There SDPA's fused CPU kernel, the inference default, is
not always the fastest: on an AMD EPYC (AVX512-BF16, 2 cores) its backward took a third of a
prefix-stage step, and the plain matmul ("eager") attention made the step 1.3x faster. Both
compute the same attention, so :func:`training_attention` times one forward and backward of
each on a training-sized batch, once per machine and model shape (see
:mod:`~neuroomics_bridge.backbone.calibration`), and :func:`attention_implementation` switches
the model for the length of a ``with`` block. The candidates differ only in the attention that
every decoder layer runs alike, so they are timed on the first :data:`TIMED_LAYERS` layers of
the model's shape (random weights): on an AMD EPYC with AVX2 alone, where the default backbone
trains in float32, timing all 30 layers took 35 s on 2 threads and 71 s on one. They run as
training runs them: packed (one row at a time, see :mod:`~neuroomics_bridge.backbone.packing`)
where the backbone packs its batches, padded under the batch's mask where it does not.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from neuroomics_bridge.backbone.calibration import calibrated_choice
from neuroomics_bridge.backbone.packing import attention_implementation, pack_inputs, padded_output
from neuroomics_bridge.backbone.text import TextBackbone

__all__ = ["ATTENTION_CANDIDATES", "attention_implementation", "training_attention"]

ATTENTION_CANDIDATES = ("sdpa", "eager")
TIMING_SHAPE = (8, 128)  # rows x tokens of a prefix-stage batch
TIMED_LAYERS = 4
"""Decoder layers the candidates are timed on (the model's first layers' shapes, random weights)."""


def training_attention(backbone: TextBackbone) -> str:
    """The faster attention implementation for training steps of ``backbone`` on this machine.

    Timed once (about ten forward and backward passes of a ``(8, 128)`` right-padded batch through a
    decoder of :data:`TIMED_LAYERS` layers of the model's shapes, packed where ``backbone`` packs
    its training batches) per CPU, library versions, model shape, dtype, device and layout, then
    read from the kernel cache.

    Parameters
    ----------
    backbone
        The backbone that will train (its weights stay frozen; gradients flow to the inputs).

    Returns
    -------
    str
        One of :data:`ATTENTION_CANDIDATES`.
    """
    config = backbone.model.config.get_text_config()
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(*TIMING_SHAPE, config.hidden_size, generator=generator).to(backbone.device, backbone.dtype)
    rows, tokens = TIMING_SHAPE
    lengths = torch.arange(tokens, tokens - 4 * rows, -4)  # right-padded rows of unequal length, as in training
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long().to(backbone.device)
    decoder = _timing_decoder(backbone)
    packs = backbone.pack_rows and pack_inputs(decoder, {"inputs_embeds": embeds, "attention_mask": mask}) is not None
    context = {
        "model": _shape_key(config),
        "dtype": str(backbone.dtype),
        "device": backbone.device.type,
        "shape": "x".join(map(str, TIMING_SHAPE)),
        "layout": "packed" if packs else "padded",
    }

    def forward(inputs: dict) -> torch.Tensor:
        return decoder(**inputs).last_hidden_state

    def step(implementation: str) -> None:
        inputs = {"inputs_embeds": embeds.detach().requires_grad_(True), "attention_mask": mask}
        autocast = torch.autocast(backbone.device.type, dtype=backbone.dtype, enabled=backbone.dtype != torch.float32)
        with attention_implementation(decoder, implementation), torch.random.fork_rng(devices=[]):
            with autocast:  # packed inside the implementation switch, so the packed rows attend with it
                hidden = padded_output(decoder, forward, inputs) if packs else forward(inputs)
                loss = hidden.float().square().mean()
            torch.autograd.grad(loss, inputs["inputs_embeds"])  # to the inputs only: no parameter's .grad is touched

    return calibrated_choice(
        "training-attention",
        {name: (lambda name=name: step(name)) for name in ATTENTION_CANDIDATES},
        context=context,
    )


def _timing_decoder(backbone: TextBackbone) -> torch.nn.Module:
    """A decoder of the backbone's architecture and dtype, on its first device, with
    :data:`TIMED_LAYERS` layers (or all, if fewer) of random weights, frozen as training freezes
    the backbone's; the backbone itself is left alone."""
    from transformers import AutoModel

    config = copy.deepcopy(backbone.model.config.get_text_config())
    config.num_hidden_layers = min(TIMED_LAYERS, config.num_hidden_layers)
    for listed in ("layer_types", "mlp_layer_types"):  # per-layer lists some configs keep
        if isinstance(getattr(config, listed, None), list):
            setattr(config, listed, getattr(config, listed)[: config.num_hidden_layers])
    with torch.random.fork_rng(devices=[]), torch.device(backbone.device):
        torch.manual_seed(0)
        decoder = AutoModel.from_config(config, dtype=backbone.dtype)
    return decoder.requires_grad_(False).eval()


def _shape_key(config: Any) -> str:
    """Every shape the timed step depends on: layers, widths, query and key/value heads, head size."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", 0)
    return (
        f"{config.model_type}-{config.num_hidden_layers}x{config.hidden_size}-{heads}h"
        f"-{kv_heads}kv-{head_dim}d-{intermediate}i"
    )
