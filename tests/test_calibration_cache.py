"""Kernel choices by measurement: timed once per key, confirmed once by a later process, read back
after, timed again on a new key; the attention a training step uses gives the same numbers as the
inference default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuroomics_bridge.backbone import calibration, packing
from neuroomics_bridge.backbone.attention import ATTENTION_CANDIDATES, attention_implementation, training_attention
from neuroomics_bridge.backbone.calibration import calibrated_choice


class FakeClock:
    """``time`` for the calibration module: a candidate's run advances it by the seconds it is
    meant to take, so the timings, and so the choices, do not depend on how busy the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(calibration, "time", fake)
    return fake


def counting_candidates(clock: FakeClock, delays: dict[str, float]) -> tuple[dict, dict[str, int]]:
    calls = dict.fromkeys(delays, 0)

    def make(name: str):
        def run() -> None:
            calls[name] += 1
            clock.now += delays[name]

        return run

    return {name: make(name) for name in delays}, calls


def test_the_faster_candidate_is_timed_once_then_read_from_the_cache(clock, tmp_path) -> None:
    path = tmp_path / "kernels.json"
    candidates, calls = counting_candidates(clock, {"slow": 0.02, "fast": 0.0})
    assert calibrated_choice("task", candidates, context={"shape": "8x128"}, repeats=2, path=path) == "fast"
    assert calls == {"slow": 3, "fast": 3}  # one warm-up and two timed runs each
    assert calibrated_choice("task", candidates, context={"shape": "8x128"}, path=path) == "fast"
    assert calls == {"slow": 3, "fast": 3}  # the cache answered
    entry = next(iter(json.loads(path.read_text()).values()))
    assert entry["choice"] == "fast" and entry["key"]["cpu"] == calibration.cpu_model()
    assert entry["seconds"] == pytest.approx({"slow": 0.02, "fast": 0.0})  # each one's best timed run


def test_candidates_take_turns_so_a_slow_spell_slows_them_alike(clock, tmp_path) -> None:
    calls = []

    def make(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            clock.now += seconds + (0.05 if len(calls) <= 4 else 0.0)  # the machine is busy for four runs

        return run

    candidates = {"fast": make("fast", 0.0), "slow": make("slow", 0.01)}
    assert calibrated_choice("task", candidates, repeats=3, path=tmp_path / "kernels.json") == "fast"
    assert calls == ["fast", "slow", "fast", "slow", "slow", "fast", "fast", "slow"]  # warm-ups, then rotated rounds


def test_a_later_process_times_once_more_and_keeps_each_candidates_best_time(clock, tmp_path, monkeypatch) -> None:
    path = tmp_path / "kernels.json"
    delays = {"fast": 0.03, "slow": 0.01}  # the first process meets a slow spell on "fast"
    candidates, calls = counting_candidates(clock, delays)
    assert calibrated_choice("task", candidates, repeats=1, path=path) == "slow"
    assert calibrated_choice("task", candidates, repeats=1, path=path) == "slow" and calls["fast"] == 2
    delays["fast"] = 0.0
    monkeypatch.setattr(calibration, "_timed_here", {})  # another process
    assert calibrated_choice("task", candidates, repeats=1, path=path) == "fast" and calls["fast"] == 4
    entry = next(iter(json.loads(path.read_text()).values()))
    assert entry["timings"] == calibration.CONFIRMING_TIMINGS and entry["seconds"] == pytest.approx(
        {"fast": 0.0, "slow": 0.01}
    )
    delays["fast"] = 0.05  # a slow spell in a third process changes nothing: it only reads
    monkeypatch.setattr(calibration, "_timed_here", {})
    assert calibrated_choice("task", candidates, repeats=1, path=path) == "fast" and calls["fast"] == 4


def test_another_machine_key_or_context_times_again(clock, tmp_path, monkeypatch) -> None:
    path = tmp_path / "kernels.json"
    candidates, calls = counting_candidates(clock, {"a": 0.0, "b": 0.0})
    calibrated_choice("task", candidates, context={"shape": "8x128"}, repeats=1, path=path)
    calibrated_choice("task", candidates, context={"shape": "1x1"}, repeats=1, path=path)  # another workload
    assert calls == {"a": 4, "b": 4}
    original = calibration.machine_key
    monkeypatch.setattr(calibration, "machine_key", lambda: {**original(), "torch": "99.0"})  # an upgraded torch
    calibrated_choice("task", candidates, context={"shape": "8x128"}, repeats=1, path=path)
    assert calls == {"a": 6, "b": 6}
    assert len(json.loads(path.read_text())) == 3  # the old entries are kept beside the new one


def test_a_cpu_of_the_same_name_with_other_instructions_times_again(clock, tmp_path, monkeypatch) -> None:
    """VMs name an AVX2-only AMD EPYC and an AVX512-BF16 one alike; a shared home must not mix them."""
    path = tmp_path / "kernels.json"
    candidates, calls = counting_candidates(clock, {"a": 0.0, "b": 0.0})
    for isa in ("AVX2", "AVX512", "AVX2"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda isa=isa: isa)
        monkeypatch.setattr(calibration, "_timed_here", {})  # each as a process of its own
        calibrated_choice("task", candidates, repeats=1, path=path)
    assert calls == {"a": 6, "b": 6}  # AVX2 timed, AVX512 timed, AVX2 confirmed once
    assert sorted(entry["key"]["isa"] for entry in json.loads(path.read_text()).values()) == ["AVX2", "AVX512"]


def test_a_cached_choice_that_is_no_longer_a_candidate_is_timed_again(clock, tmp_path) -> None:
    path = tmp_path / "kernels.json"
    calibrated_choice("task", counting_candidates(clock, {"gone": 0.0})[0], repeats=1, path=path)
    candidates, calls = counting_candidates(clock, {"new": 0.0})
    assert calibrated_choice("task", candidates, repeats=1, path=path) == "new" and calls["new"] == 2


def test_an_unreadable_cache_warns_and_is_rewritten(clock, tmp_path) -> None:
    path = tmp_path / "kernels.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="kernels.json: unreadable kernel calibration"):
        assert calibrated_choice("task", counting_candidates(clock, {"x": 0.0})[0], repeats=1, path=path) == "x"
    assert next(iter(json.loads(path.read_text()).values()))["choice"] == "x"


@pytest.mark.parametrize(
    "content", ['{"abc": "garbage"}', '{"abc": {"choice": "x", "timings": "2"}}', "[1, 2]", '{"abc": {"seconds": 1}}']
)
def test_a_cache_entry_of_another_shape_is_timed_again_with_a_warning(clock, tmp_path, content: str) -> None:
    path = tmp_path / "kernels.json"
    path.write_text(content)
    candidates, calls = counting_candidates(clock, {"x": 0.0})
    with pytest.warns(UserWarning, match="kernels.json: .*(malformed|expected a JSON object)"):
        assert calibrated_choice("task", candidates, repeats=1, path=path) == "x"
    assert calls == {"x": 2}
    assert any(entry.get("choice") == "x" for entry in json.loads(path.read_text()).values())


def test_a_cache_folder_that_cannot_be_written_still_gives_the_choice_timed_once(clock, tmp_path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    candidates, calls = counting_candidates(clock, {"slow": 0.02, "fast": 0.0})
    with pytest.warns(UserWarning, match="kernel calibration not cached"):
        assert calibrated_choice("task", candidates, repeats=1, path=blocked / "kernels.json") == "fast"
    assert calibrated_choice("task", candidates, repeats=1, path=blocked / "kernels.json") == "fast"
    assert calls == {"slow": 2, "fast": 2}  # this process does not time it again
    assert blocked.read_text().startswith("a file")


def test_attention_switch_is_undone_even_when_the_block_fails(tiny_backbone) -> None:
    model = tiny_backbone.model
    before = model.config._attn_implementation
    other = next(name for name in ATTENTION_CANDIDATES if name != before)
    with pytest.raises(RuntimeError, match="inside"), attention_implementation(model, other):
        assert model.config._attn_implementation == other
        raise RuntimeError("inside")
    assert model.config._attn_implementation == before


def test_training_attention_is_a_candidate_and_leaves_the_rng_and_model_alone(tiny_backbone) -> None:
    before, state = tiny_backbone.model.config._attn_implementation, torch.random.get_rng_state()
    assert training_attention(tiny_backbone) in ATTENTION_CANDIDATES
    assert tiny_backbone.model.config._attn_implementation == before
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in tiny_backbone.model.parameters())


def test_training_attention_times_the_layout_the_backbone_trains_with(tiny_backbone, monkeypatch, tmp_path) -> None:
    """Packed batches attend row by row, padded ones under a mask: each layout is timed as it runs,
    under its own key."""
    monkeypatch.setattr(calibration, "cache_root", lambda: tmp_path)
    packed_queries = []
    plain = packing.packed_attention

    def counting(module, query, *args, **kwargs):
        packed_queries.append(query.shape)
        return plain(module, query, *args, **kwargs)

    monkeypatch.setattr(packing, "packed_attention", counting)
    layouts = {}
    for pack_rows in (True, False):
        tiny_backbone.pack_rows = pack_rows
        try:
            training_attention(tiny_backbone)
        finally:
            tiny_backbone.pack_rows = True
        layouts[pack_rows] = len(packed_queries)
        packed_queries.clear()
    assert layouts[True] > 0 and layouts[False] == 0
    entries = json.loads((tmp_path / calibration.CALIBRATION_FILE).read_text()).values()
    assert sorted(entry["key"]["layout"] for entry in entries) == ["packed", "padded"]


def test_every_training_attention_gives_the_same_loss_gradient_and_greedy_tokens(grounding_bridge) -> None:
    bridge, features, present, reports = grounding_bridge
    results = {}
    for name in ATTENTION_CANDIDATES:
        prefix_input = {m: x.clone().requires_grad_(True) for m, x in features.items()}
        with attention_implementation(bridge.backbone.model, name):
            nll, _ = bridge.report_nll(prefix_input, present, reports)
            nll.sum().backward()
            tokens = bridge.backbone.generate(["Report of this subject:"], max_new_tokens=8)
        results[name] = (nll.detach(), prefix_input["gene"].grad, tokens)
    (nll_a, grad_a, text_a), (nll_b, grad_b, text_b) = results.values()
    torch.testing.assert_close(nll_a, nll_b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-3, atol=1e-5)
    assert text_a == text_b


@pytest.fixture
def grounding_bridge(make_bridge, small_cohort):
    bridge = make_bridge()
    rows = 3
    features = {
        m: torch.randn(rows, d, generator=torch.Generator().manual_seed(1)) for m, d in bridge.modality_dims.items()
    }
    present = {m: torch.ones(rows, dtype=torch.bool) for m in features}
    reports = list(np.asarray(small_cohort.reports)[:rows])
    return bridge, features, present, reports


def test_an_unknown_training_attention_is_refused_by_name(tiny_backbone) -> None:
    from neuroomics_bridge.errors import ConfigError
    from neuroomics_bridge.training.trainer import TrainingBackbone

    with pytest.raises(ConfigError, match="got 'flash'"):
        TrainingBackbone(tiny_backbone, "flash")


def test_training_attention_times_models_of_other_head_shapes_apart(tiny_backbone, monkeypatch, tmp_path) -> None:
    """Models alike in layers, width and query heads but not in key/value heads, head size or MLP
    width time differently, so one's choice must not answer for another."""
    from transformers import LlamaForCausalLM

    from neuroomics_bridge.backbone.text import TextBackbone

    monkeypatch.setattr(calibration, "cache_root", lambda: tmp_path)
    base = tiny_backbone.model.config
    for change in ({}, {"num_key_value_heads": 4}, {"head_dim": 16}, {"intermediate_size": 128}):
        config = type(base).from_dict({**base.to_dict(), **change})
        other = TextBackbone(LlamaForCausalLM(config), tiny_backbone.tokenizer, name="tiny", kernel="onednn")
        training_attention(other)
    entries = json.loads((tmp_path / calibration.CALIBRATION_FILE).read_text()).values()
    assert len({entry["key"]["model"] for entry in entries}) == 4


def test_cpu_models_are_told_apart_on_arm_too(tmp_path) -> None:
    """Arm's /proc/cpuinfo names no model; its implementer and part numbers tell CPUs apart."""
    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: avx2\n")
    assert calibration.cpu_model(intel) == "Intel(R) Xeon(R) Processor"
    models = set()
    for part in ("0xd0c", "0xd40"):  # Neoverse N1 and V1
        arm = tmp_path / f"arm-{part}"
        arm.write_text(f"processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: {part}\n")
        models.add(calibration.cpu_model(arm))
    assert len(models) == 2 and all("implementer 0x41 part 0xd" in model for model in models)
