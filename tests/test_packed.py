"""Prepacked oneDNN weights for gradient-free CPU forwards (``backbone.packed``)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from neuroomics_bridge import TextBackbone
from neuroomics_bridge.backbone.packed import (
    COPY_ROWS_MAX,
    PACKABLE_DTYPES,
    STACKED_ROWS_MAX,
    PackedLinear,
    drop_packed_weights,
    pack_linear_weights,
)


def _has_packed_copy(layer: PackedLinear) -> bool:
    return layer._packed is not None or (layer._siblings is not None and layer._siblings._packed is not None)


def _layer(dtype: torch.dtype, bias: bool = True) -> tuple[nn.Linear, PackedLinear]:
    torch.manual_seed(0)
    linear = nn.Linear(48, 40, bias=bias).to(dtype).requires_grad_(False)
    return linear, PackedLinear.from_linear(linear)


BF16_PACKABLE = pytest.mark.skipif(
    torch.bfloat16 not in PACKABLE_DTYPES, reason="oneDNN cannot pack bf16 on this CPU (AVX2 only)"
)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=BF16_PACKABLE)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_layer_computes_what_the_plain_one_does(dtype: torch.dtype, bias: bool) -> None:
    linear, packed = _layer(dtype, bias)
    x = torch.randn(2, 5, 48).to(dtype)
    with torch.inference_mode():
        expected, got = linear(x), packed(x)
    assert packed._packed is not None, "a gradient-free forward must use the packed copy"
    assert packed.weight is linear.weight and packed.bias is linear.bias
    assert list(packed.state_dict()) == list(linear.state_dict())
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_a_dtype_onednn_cannot_pack_here_takes_the_plain_path_and_is_refused_as_a_kernel(
    tiny_model_dir: Path, monkeypatch
) -> None:
    """As bf16 on an AVX2-only CPU (AMD EPYC, Zen 3), where oneDNN refuses to pack it."""
    from neuroomics_bridge.backbone import packed, text
    from neuroomics_bridge.errors import ConfigError

    for module in (packed, text):
        monkeypatch.setattr(module, "PACKABLE_DTYPES", frozenset())  # nothing packable
    linear, layer = _layer(torch.float32)
    x = torch.randn(3, 48)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), linear(x))
    assert layer._packed is None
    with pytest.raises(ConfigError, match=r"kernel: 'packed' needs oneDNN to pack torch\.float32"):
        TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", kernel="packed")


def test_forwards_that_need_a_gradient_take_the_plain_path() -> None:
    linear, packed = _layer(torch.float32)
    x = torch.randn(3, 48, requires_grad=True)
    packed(x).sum().backward()
    assert packed._packed is None
    torch.testing.assert_close(x.grad, linear.weight.sum(dim=0).expand(3, -1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides the dtype, not the copy
        assert packed(torch.randn(3, 48)).dtype == torch.bfloat16
    assert packed._packed is None


def test_the_packed_copy_follows_changes_to_the_weight() -> None:
    linear, packed = _layer(torch.float32)
    x = torch.randn(4, 48)
    with torch.no_grad():
        packed(x)
        linear.weight.mul_(2)  # in place, as an optimiser step: the version counter moves
        torch.testing.assert_close(packed(x), linear(x))
        linear.weight = nn.Parameter(torch.zeros_like(linear.weight))  # a new parameter: other storage
        packed.weight = linear.weight
        torch.testing.assert_close(packed(x), linear.bias.expand(4, -1))
        linear.weight.data += 1  # invisible to the version counter: the caller says so
        drop_packed_weights(packed)
        torch.testing.assert_close(packed(x), linear(x))


def test_a_packed_layer_can_be_deep_copied() -> None:
    _, packed = _layer(torch.float32)
    x = torch.randn(4, 48)
    with torch.no_grad():
        expected = packed(x)
        clone = copy.deepcopy(packed)
        assert clone._packed is None and clone.weight is not packed.weight
        torch.testing.assert_close(clone(x), expected)
    assert packed._packed is not None, "the original keeps its copy"


def test_a_shallow_copy_of_a_stacked_layer_computes_on_its_own() -> None:
    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(16, n) for n in (16, 8, 8))

    attention = Attention()
    pack_linear_weights(attention)
    x = torch.randn(1, 16)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, attention.q_proj.weight, attention.q_proj.bias)
        torch.testing.assert_close(copy.copy(attention.q_proj)(x), expected)
        torch.testing.assert_close(attention.q_proj(x), expected)  # the original still runs its stack


def test_packing_a_model_keeps_its_parameters_and_their_ties(tiny_model_dir: Path) -> None:
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32")
    model = backbone.model
    before = {name: id(p) for name, p in model.named_parameters()}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = model(ids).logits
    packed = pack_linear_weights(model)
    assert packed == 0 or isinstance(model.get_output_embeddings(), PackedLinear)  # 0: packed already at load
    assert pack_linear_weights(model) == 0
    assert {name: id(p) for name, p in model.named_parameters()} == before
    assert not any(type(m) is nn.Linear for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)


def _block_with_siblings(bias: bool) -> nn.Module:
    torch.manual_seed(0)
    block = nn.Module()
    for name, width in (("q_proj", 16), ("k_proj", 8), ("v_proj", 8), ("o_proj", 16)):
        block.add_module(name, nn.Linear(16, width, bias=bias).requires_grad_(False))
    return block


@pytest.mark.parametrize("bias", [True, False])
def test_siblings_are_packed_as_one_stack_and_each_gets_its_own_output(bias: bool) -> None:
    block = _block_with_siblings(bias)
    plain = copy.deepcopy(block)
    pack_linear_weights(block)
    q, k, v, o = block.q_proj, block.k_proj, block.v_proj, block.o_proj
    assert q._siblings is not None and q._siblings is k._siblings is v._siblings and o._siblings is None
    x, y = torch.randn(3, 16), torch.randn(3, 16)
    with torch.inference_mode():
        got = [q(x), k(x), v(x)]  # one multiply of the stack; k and v take their waiting slices
        assert q._siblings._waiting == {} and all(layer._packed is None for layer in (q, k, v))
        assert [t.shape[-1] for t in got] == [16, 8, 8]
        for layer, out in zip(("q_proj", "k_proj", "v_proj"), got, strict=True):
            torch.testing.assert_close(out, getattr(plain, layer)(x))
        # a sibling called on another input, or twice, computes afresh instead of taking a slice
        q(x)
        torch.testing.assert_close(k(y), plain.k_proj(y))
        torch.testing.assert_close(q(y), plain.q_proj(y))
        torch.testing.assert_close(q(y), plain.q_proj(y))
        many_rows = torch.randn(STACKED_ROWS_MAX + 1, 16)  # prefill-sized: each layer multiplies on its own
        torch.testing.assert_close(q(many_rows), plain.q_proj(many_rows))
        assert q._siblings._input is not many_rows
    with torch.no_grad():  # a weight changed between siblings' calls: the waiting slice is stale
        q(x)
        block.v_proj.weight.mul_(2)
        plain.v_proj.weight.mul_(2)
        torch.testing.assert_close(v(x), plain.v_proj(x))
        x.mul_(3)  # the input changed in place: the same tensor, another value
        q(x)
        x.add_(1)
        torch.testing.assert_close(k(x), plain.k_proj(x))


def test_a_copy_of_a_model_stacks_its_own_siblings() -> None:
    block = _block_with_siblings(bias=False)
    pack_linear_weights(block)
    x = torch.randn(2, 16)
    with torch.no_grad():
        expected = [block.q_proj(x), block.k_proj(x)]
        clone = copy.deepcopy(block)
        assert clone.q_proj._siblings is clone.k_proj._siblings is not block.q_proj._siblings
        assert clone.q_proj._siblings.layers == [clone.q_proj, clone.k_proj, clone.v_proj]
        assert clone.q_proj._siblings._packed is None
        clone.k_proj.weight.zero_()
        assert clone.q_proj(x).equal(expected[0]) and not clone.k_proj(x).any()
        assert block.k_proj(x).equal(expected[1]), "the original keeps its own weights and stack"


def test_a_backbone_packs_its_weights_where_packing_measured_fastest(tiny_model_dir: Path, monkeypatch) -> None:
    from neuroomics_bridge.backbone import text

    monkeypatch.setattr(text, "single_row_kernel", lambda model: "packed")
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32")
    layers = [m for m in backbone.model.modules() if isinstance(m, PackedLinear)]
    assert layers and not any(type(m) is nn.Linear for m in backbone.model.modules())
    greedy = backbone.generate("Axial FLAIR shows", max_new_tokens=6)
    assert all(_has_packed_copy(layer) for layer in layers)
    backbone.mark_weights_changed()
    assert not any(_has_packed_copy(layer) for layer in layers)
    monkeypatch.setattr(text, "single_row_kernel", lambda model: "onednn")
    plain = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32")
    assert plain.generate("Axial FLAIR shows", max_new_tokens=6) == greedy


def test_lora_trains_on_packed_layers_as_on_plain_ones(tiny_model_dir: Path, make_bridge, monkeypatch) -> None:
    from neuroomics_bridge import LoRAConfig
    from neuroomics_bridge.backbone import text

    ids = torch.tensor([[5, 6, 7, 8]])
    results = {}
    for kernel in ("packed", "onednn"):
        monkeypatch.setattr(text, "single_row_kernel", lambda model, kernel=kernel: kernel)
        backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32")
        torch.manual_seed(0)
        make_bridge(backbone=backbone).add_lora(LoRAConfig(dropout=0.0))
        adapted = [m for m in backbone.model.modules() if hasattr(m, "lora_B")]
        assert adapted and all(isinstance(m.base_layer, PackedLinear) == (kernel == "packed") for m in adapted)
        for layer in adapted:  # a non-zero update, so that the adapters change the output and get gradients
            nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
        backbone.model(ids).logits.square().mean().backward()
        with torch.no_grad():
            inferred = backbone.model(ids).logits
        results[kernel] = (inferred, [layer.lora_A["default"].weight.grad for layer in adapted])
    torch.testing.assert_close(results["packed"][0], results["onednn"][0], rtol=1e-4, atol=1e-4)
    for packed_grad, plain_grad in zip(results["packed"][1], results["onednn"][1], strict=True):
        assert packed_grad.abs().sum() > 0
        torch.testing.assert_close(packed_grad, plain_grad, rtol=1e-3, atol=1e-6)


def test_compiled_decoding_reads_the_packed_weights_as_they_are_now(tiny_model_dir: Path, monkeypatch) -> None:
    from neuroomics_bridge.backbone import text

    monkeypatch.setattr(text, "single_row_kernel", lambda model: "packed")
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    prompts = ["Axial FLAIR shows", "Memory decline over two years"]
    head = backbone.model.get_output_embeddings().weight

    def greedy(compiled: bool) -> list[str]:
        backbone.compile_decoding = compiled
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a fallback to eager decoding would warn
            return [backbone.generate(prompt, max_new_tokens=8)[0] for prompt in prompts]

    original = greedy(False)
    assert greedy(True) == original  # the second prompt reuses the graph compiled for the first
    with torch.no_grad():
        head.neg_()  # in place (the version counter moves): every logit changes sign
    flipped = greedy(False)
    assert flipped != original and greedy(True) == flipped
    head.data.neg_()  # invisible to version counters until announced
    backbone.mark_weights_changed()
    assert greedy(True) == original


def _bf16_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """What a layer with a bf16 row copy computes for a float32 input: all in bf16, then float32."""
    bias = None if layer.bias is None else layer.bias.to(torch.bfloat16)
    return nn.functional.linear(x.to(torch.bfloat16), layer.weight.to(torch.bfloat16), bias).float()


@pytest.mark.parametrize("bias", [True, False])
def test_a_bf16_row_copy_serves_single_rows_and_the_float32_weights_the_rest(bias: bool) -> None:
    block = _block_with_siblings(bias)
    plain = copy.deepcopy(block)
    pack_linear_weights(block, row_dtype=torch.bfloat16)
    layers = [block.q_proj, block.k_proj, block.v_proj, block.o_proj]
    assert all(layer.row_dtype == torch.bfloat16 for layer in layers)
    assert block.q_proj._siblings is block.v_proj._siblings is not None, "siblings share one bf16 stack"
    row, rows = torch.randn(1, 1, 16), torch.randn(1, COPY_ROWS_MAX + 1, 16)
    with torch.inference_mode():
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out = getattr(block, name)(row)
            assert out.dtype == torch.float32
            assert out.equal(_bf16_linear(getattr(plain, name), row)), name
            assert not out.equal(getattr(plain, name)(row)), "the row must have read the bf16 copy"
            assert getattr(block, name)(rows).equal(getattr(plain, name)(rows)), "more rows: the float32 weights"
        stack = block.q_proj._siblings._packed[0]
        assert stack.dtype == torch.bfloat16 and stack.shape == (32, 16)
    with torch.no_grad():  # the copy follows an in-place change of the float32 weight
        block.o_proj.weight.mul_(2)
        plain.o_proj.weight.mul_(2)
        assert block.o_proj(row).equal(_bf16_linear(plain.o_proj, row))
    x = row.clone().requires_grad_(True)
    block.o_proj(x).sum().backward()  # a forward that needs a gradient takes the float32 weights
    torch.testing.assert_close(x.grad, plain.o_proj.weight.sum(dim=0).expand(1, 1, -1))


def test_a_backbone_decodes_through_a_bf16_copy_only_when_asked(tiny_model_dir: Path) -> None:
    from neuroomics_bridge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'bf16-copy' is for float32 models, and .* is loaded as torch\.bfloat16"):
        TextBackbone.from_pretrained(tiny_model_dir, dtype="bfloat16", kernel="bf16-copy")
    with pytest.raises(ConfigError, match=r"'bf16-copy' copies float32 linear weights, and .*'s are int8"):
        TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", quantize="int8", kernel="bf16-copy")
    copied = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", kernel="bf16-copy")
    plain = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", kernel="onednn")
    layers = [m for m in copied.model.modules() if isinstance(m, PackedLinear)]
    assert layers and all(layer.row_dtype == torch.bfloat16 for layer in layers)
    assert copied.kernel == "bf16-copy" and "bf16 copy for single rows" in repr(copied)
    assert copied.model.dtype == torch.float32 and copied.weights_hash == plain.weights_hash
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(copied.model(ids).logits, plain.model(ids).logits, rtol=0, atol=0)  # prefill
        step = {b: b.model(ids[:, :1]).logits for b in (copied, plain)}  # a decoding step's single row
    assert not step[copied].equal(step[plain])
    torch.testing.assert_close(step[copied], step[plain], rtol=0.05, atol=0.05)
    texts = ["Axial FLAIR shows", "Memory decline over two years"]
    torch.testing.assert_close(copied.encode(texts), plain.encode(texts), rtol=0, atol=0)
    greedy = [copied.generate(text, max_new_tokens=8)[0] for text in texts]
    copied.compile_decoding = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to eager decoding would warn
        assert [copied.generate(text, max_new_tokens=8)[0] for text in texts] == greedy
