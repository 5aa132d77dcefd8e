"""Device/dtype choice and the single-row kernel switch."""

from __future__ import annotations

import pytest
import torch

from neuroomics_bridge import ConfigError, TextBackbone
from neuroomics_bridge.backbone import hardware


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_cpu_dtype_follows_native_bf16_support(monkeypatch, native: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.default_dtype(torch.device("cpu")) == expected


def test_dtype_names_resolve_and_unknown_ones_fail() -> None:
    assert hardware.resolve_dtype("bfloat16") is torch.bfloat16
    assert hardware.resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ConfigError, match="got 'int3'"):
        hardware.resolve_dtype("int3")


def _flag_seen_inside_forward(backbone: TextBackbone, ids: torch.Tensor) -> bool:
    seen = []
    handle = backbone.model.get_decoder().register_forward_pre_hook(
        lambda module, args: seen.append(torch.backends.mkldnn.enabled)
    )
    try:
        with torch.no_grad():
            backbone.model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def routed(tiny_model_dir) -> TextBackbone:
    """A tiny backbone with the single-row switch on, whatever this CPU's calibration chose."""
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32")
    hardware.route_single_row_matmuls_to_aten(backbone.model)
    return backbone


def test_single_row_forwards_skip_onednn_and_restore_it(routed: TextBackbone) -> None:
    assert torch.backends.mkldnn.enabled
    assert _flag_seen_inside_forward(routed, torch.tensor([[5]])) is False
    assert torch.backends.mkldnn.enabled
    assert _flag_seen_inside_forward(routed, torch.tensor([[5, 6, 7]])) is True
    assert _flag_seen_inside_forward(routed, torch.tensor([[5], [6], [7]])) is True


def test_onednn_is_restored_when_a_forward_fails(routed: TextBackbone) -> None:
    out_of_vocabulary = torch.tensor([[10**6]])
    with pytest.raises(IndexError):
        routed.model(input_ids=out_of_vocabulary)
    assert torch.backends.mkldnn.enabled


def test_wrapping_one_model_twice_keeps_the_switch_balanced(routed: TextBackbone) -> None:
    hardware.route_single_row_matmuls_to_aten(routed.model)
    assert _flag_seen_inside_forward(routed, torch.tensor([[5]])) is False
    assert torch.backends.mkldnn.enabled


@pytest.mark.parametrize(("kernel", "switched"), [("aten", False), ("onednn", True)])
def test_a_backbone_routes_single_rows_only_where_aten_measured_faster(
    tiny_model_dir, monkeypatch, kernel: str, switched: bool
) -> None:
    from neuroomics_bridge.backbone import text

    monkeypatch.setattr(text, "single_row_kernel", lambda model: kernel)
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32")
    assert _flag_seen_inside_forward(backbone, torch.tensor([[5]])) is switched


def _unpacked_model_and_timed_candidates(tiny_model_dir, monkeypatch, tmp_path) -> tuple[torch.nn.Module, list]:
    """The tiny model with plain ``nn.Linear`` layers, an empty kernel cache, and the list every
    timed candidate's name is appended to."""
    from neuroomics_bridge.backbone import calibration, text

    monkeypatch.setattr(text, "single_row_kernel", lambda model: "onednn")
    model = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32").model
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timed: list = []
    original = calibration._best_times
    monkeypatch.setattr(calibration, "_best_times", lambda runs, repeats: timed.extend(runs) or original(runs, repeats))
    return model, timed


def test_the_single_row_kernel_is_timed_once_per_model_shape(tiny_model_dir, monkeypatch, tmp_path) -> None:
    model, timed = _unpacked_model_and_timed_candidates(tiny_model_dir, monkeypatch, tmp_path)
    first = hardware.single_row_kernel(model)
    candidates = len(timed)
    assert first in ("aten", "onednn", "packed") and candidates in (2, 3)  # 3 where a packed copy fits
    assert hardware.single_row_kernel(model) == first and len(timed) == candidates  # read from the cache
    assert torch.backends.mkldnn.enabled


def test_the_packed_candidate_is_timed_only_where_a_second_copy_fits(tiny_model_dir, monkeypatch, tmp_path) -> None:
    from neuroomics_bridge.backbone.packed import PackedLinear, stack_siblings

    model, timed = _unpacked_model_and_timed_candidates(tiny_model_dir, monkeypatch, tmp_path)
    monkeypatch.setattr(hardware, "available_memory", lambda: 0)
    assert hardware.single_row_kernel(model) in ("aten", "onednn") and len(timed) == 2
    monkeypatch.setattr(hardware, "available_memory", lambda: 2**40)
    stacked = []
    monkeypatch.setattr(hardware, "stack_siblings", lambda parent: stacked.append(parent) or stack_siblings(parent))
    hardware.single_row_kernel(model)  # a choice made without "packed" is not reused
    assert len(timed) == 5
    assert not any(isinstance(m, PackedLinear) for m in model.modules()), "the timing packs copies only"
    timed_stacks = [m.q_proj._siblings for m in stacked if hasattr(m, "q_proj")]  # timed as decoding runs them
    assert len(timed_stacks) == model.config.num_hidden_layers and None not in timed_stacks


def _cgroup_files(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_cgroup_memory_limit_caps_the_memory_counted_as_available(tmp_path, monkeypatch) -> None:
    gib = 2**30
    v2 = _cgroup_files(tmp_path / "v2", {"memory.max": f"{4 * gib}\n", "memory.current": f"{3 * gib}\n",
                                         "memory.stat": f"anon {2 * gib}\ninactive_file {gib // 2}\n"})  # fmt: skip
    assert hardware.cgroup_memory_headroom(v2) == 4 * gib - (3 * gib - gib // 2)  # file cache counts as free
    v1 = _cgroup_files(tmp_path / "v1", {"memory/memory.limit_in_bytes": f"{2 * gib}\n",
                                         "memory/memory.usage_in_bytes": f"{3 * gib}\n",
                                         "memory/memory.stat": "total_inactive_file 0\n"})  # fmt: skip
    assert hardware.cgroup_memory_headroom(v1) == 0  # over the limit: nothing left
    assert hardware.cgroup_memory_headroom(_cgroup_files(tmp_path / "open", {"memory.max": "max\n"})) is None
    unlimited_v1 = {"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "1\n"}
    assert hardware.cgroup_memory_headroom(_cgroup_files(tmp_path / "open-v1", unlimited_v1)) is None
    assert hardware.cgroup_memory_headroom(tmp_path / "none") is None

    host = hardware.available_memory()
    monkeypatch.setattr(hardware, "cgroup_memory_headroom", lambda: gib)
    assert hardware.available_memory() == (min(host, gib) if host else gib)
    monkeypatch.setattr(hardware, "cgroup_memory_headroom", lambda: None)
    assert hardware.available_memory() == host
