"""Weight-only int8 linear layers (``TextBackbone.from_pretrained(quantize="int8")``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from neuroomics_bridge import ConfigError, TextBackbone
from neuroomics_bridge.backbone.config import BackboneConfig
from neuroomics_bridge.backbone.quantize import Int8Linear, int8_kernel_dtype, quantize_int8


def random_linear(seed: int = 0, bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(48, 20, bias=bias)
    with torch.no_grad():
        linear.weight[3] *= 50  # rows of very different ranges get their own scales
    return linear


def test_int8_codes_reconstruct_each_weight_within_half_a_step() -> None:
    linear = random_linear()
    layer = Int8Linear.from_linear(linear)
    assert layer.weight.dtype == torch.int8 and layer.weight.abs().max() <= 127
    assert (layer.weight.abs().amax(dim=1) == 127).all()  # each row's largest weight uses the full range
    error = (layer.weight.float() * layer.scale[:, None] - linear.weight).abs()
    assert (error <= layer.scale[:, None] / 2 + 1e-7).all()
    assert layer.scale[3] > 20 * layer.scale[2]
    torch.testing.assert_close(linear.weight, random_linear().weight)  # the float layer is left as it was


@pytest.mark.parametrize("bias", [True, False])
def test_the_int8_kernel_and_the_dequantised_matmul_give_the_same_product(monkeypatch, bias: bool) -> None:
    layer = Int8Linear.from_linear(random_linear(bias=bias), max_kernel_rows=4)
    kernel_calls = []
    kernel = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: kernel_calls.append(a[0].shape) or kernel(*a))
    weight = layer.weight.float() * layer.scale[:, None]  # the weight the codes stand for
    for shape in [(1, 1, 48), (2, 2, 48), (3, 7, 48)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        expected = x @ weight.T + (layer.bias if bias else 0)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert kernel_calls == [(1, 48), (4, 48)]  # only inputs of at most 4 rows took the int8 kernel


def test_a_float32_layer_can_run_the_kernel_on_bf16_activations(monkeypatch) -> None:
    layer = Int8Linear.from_linear(random_linear(), max_kernel_rows=4)
    layer.kernel_dtype = torch.bfloat16
    kernel_inputs = []
    kernel = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: kernel_inputs.append(a[0].dtype) or kernel(*a))
    x = torch.randn(2, 48, generator=torch.Generator().manual_seed(1))
    expected = x @ (layer.weight.float() * layer.scale[:, None]).T + layer.bias
    got = layer(x)
    assert kernel_inputs == [torch.bfloat16] and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())
    assert not torch.equal(got, expected)  # rounded to bf16 on the way: close, not the same


def test_the_kernel_dtype_is_timed_for_float32_models_only(monkeypatch, tmp_path) -> None:
    from neuroomics_bridge.backbone import calibration

    def model(dtype: torch.dtype) -> torch.nn.Module:
        return torch.nn.Sequential(random_linear(0), torch.nn.ReLU(), torch.nn.Linear(20, 48)).to(dtype)

    timed = []
    for faster, expected in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / faster))  # an empty cache for each
        times = {"float32": 1.0, "bfloat16": 1.0, faster: 0.5}
        monkeypatch.setattr(calibration, "_best_times", lambda runs, repeats, times=times: timed.append(1) or times)
        quantized = model(torch.float32)
        quantize_int8(quantized)
        assert {m.kernel_dtype for m in quantized if isinstance(m, Int8Linear)} == {expected}
    assert len(timed) == 2
    bf16 = model(torch.bfloat16)
    quantize_int8(bf16)
    assert {m.kernel_dtype for m in bf16 if isinstance(m, Int8Linear)} == {torch.bfloat16}
    assert int8_kernel_dtype(bf16) == torch.bfloat16 and len(timed) == 2  # its own dtype, untimed
    exact = model(torch.float32)
    quantize_int8(exact, kernel_dtype=torch.float32)
    assert {m.kernel_dtype for m in exact if isinstance(m, Int8Linear)} == {torch.float32} and len(timed) == 2


def test_an_int8_backbone_is_opt_in_and_close_to_the_float_one(tiny_model_dir: Path, tiny_backbone) -> None:
    quantized = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu", quantize="int8")
    assert tiny_backbone.quantization is None and quantized.quantization == "int8"
    assert not any(type(m) is torch.nn.Linear for m in quantized.model.modules())
    assert "int8" in repr(quantized)
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    with torch.inference_mode():
        reference, logits = tiny_backbone.model(ids).logits, quantized.model(ids).logits
        single = quantized.model(ids[:, :1]).logits  # one row: the int8 kernel
    assert (logits - reference).abs().max() < 0.02 * reference.abs().max()
    kernel_dtype = next(m.kernel_dtype for m in quantized.model.modules() if isinstance(m, Int8Linear))
    tolerance = 1e-4 if kernel_dtype == torch.float32 else 2e-2  # timed here: bf16 activations round the row
    torch.testing.assert_close(single[0, 0], logits[0, 0], rtol=tolerance, atol=tolerance)
    embedded = quantized.encode(["Tremor of the right hand."])
    assert torch.nn.functional.cosine_similarity(embedded, tiny_backbone.encode(["Tremor of the right hand."])) > 0.99


def test_training_an_int8_backbone_is_refused_with_what_to_do(tiny_model_dir: Path, make_bridge) -> None:
    from neuroomics_bridge.adapters.config import LoRAConfig
    from neuroomics_bridge.training.instruct import InstructionTuneModule
    from neuroomics_bridge.training.pretrain import ContinualPretrainModule

    quantized = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu", quantize="int8")
    message = r"loaded with quantize='int8' \(inference only\); load it without quantize to train"
    with pytest.raises(ConfigError, match="continual pretraining trains the weights of .*" + message):
        ContinualPretrainModule(quantized)
    with pytest.raises(ConfigError, match="instruction tuning trains"):
        InstructionTuneModule(quantized)
    bridge = make_bridge(backbone=quantized)
    with pytest.raises(ConfigError, match="LoRA in the backbone trains"):
        bridge.add_lora(LoRAConfig())
    assert bridge.lora is None


def test_quantisation_is_checked_where_it_is_asked_for(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="quantize"):
        BackboneConfig(quantize="int4")
    with pytest.raises(ConfigError, match="quantize: expected None or 'int8', got 'int4'"):
        TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu", quantize="int4")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4, device="meta"))
    with pytest.raises(ConfigError, match="expected every linear layer on the cpu, 1 is on meta"):
        quantize_int8(model)
    assert [type(layer) for layer in model] == [torch.nn.Linear] * 2  # refused whole, not half-quantised


def test_compiled_decoding_keeps_the_tiny_models_greedy_tokens(tiny_model_dir: Path, tiny_backbone) -> None:
    compiled = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu", compile_decoding=True)
    prompts = ["Tremor of the right hand", "Memory decline over two years with preserved insight"]
    expected = [tiny_backbone.generate(p, max_new_tokens=12)[0] for p in prompts]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to eager decoding would warn
        assert [compiled.generate(p, max_new_tokens=12)[0] for p in prompts] == expected
    assert compiled.compile_decoding and hasattr(compiled.model, "_compiled_call")  # transformers compiled it


def test_compiled_decoding_runs_int8_layers_with_bf16_kernel_activations(tiny_model_dir: Path) -> None:
    """As on the AVX2-only AMD EPYC, where Inductor's own lowering of the int8 kernel refused the
    cast activations and compiled decoding fell back to eager."""
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu", kernel="onednn")
    quantize_int8(backbone.model, kernel_dtype=torch.bfloat16)
    prompts = ["Tremor of the right hand", "Memory decline over two years with preserved insight"]
    expected = [backbone.generate(p, max_new_tokens=12)[0] for p in prompts]
    backbone.compile_decoding = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to eager decoding would warn
        assert [backbone.generate(p, max_new_tokens=12)[0] for p in prompts] == expected
    assert backbone.compile_decoding and hasattr(backbone.model, "_compiled_call")


def test_a_failing_compile_falls_back_to_eager_decoding_with_one_warning(tiny_model_dir: Path, monkeypatch) -> None:
    from transformers.generation.configuration_utils import CompileConfig

    from neuroomics_bridge.backbone import text

    def broken() -> CompileConfig:
        config = CompileConfig(backend="no-such-backend", dynamic=False)
        config._compile_all_devices = True
        return config

    monkeypatch.setattr(text, "_decode_compile_config", broken)
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    expected = backbone.generate("Tremor of the right hand", max_new_tokens=6)
    backbone.compile_decoding = True
    with pytest.warns(UserWarning, match="compiled decoding failed .*decodes eagerly from now on") as caught:
        assert backbone.generate("Tremor of the right hand", max_new_tokens=6) == expected
        assert backbone.generate("Tremor of the right hand", max_new_tokens=6) == expected
    assert len([w for w in caught if "compiled decoding failed" in str(w.message)]) == 1
    assert not backbone.compile_decoding
