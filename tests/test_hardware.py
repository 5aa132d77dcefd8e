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


def test_float32_is_chosen_only_where_it_times_faster_for_a_decoding_row_and_a_block(monkeypatch) -> None:
    from neuroomics_bridge.backbone import calibration

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(hardware, "available_memory", lambda: 2**40)
    for winners, expected in (
        (("float32", "float32"), torch.float32),
        (("float32", "bfloat16"), torch.bfloat16),
        (("bfloat16", "float32"), torch.bfloat16),
    ):
        timed = []

        def choose(task, candidates, *, context, winners=winners, timed=timed):
            for run in candidates.values():  # every candidate runs its workload on the model's shapes
                run()
            timed.append((task, sorted(candidates), context["linears"]))
            return winners[len(timed) - 1]

        monkeypatch.setattr(calibration, "calibrated_choice", choose)
        assert hardware.timed_cpu_dtype([(8, 16), (16, 8)]) == expected
        assert timed == [
            (f"cpu-dtype-{rows}-rows", ["bfloat16", "float32"], "2:[(8, 16), (16, 8)]")
            for rows in (1, hardware.BLOCK_ROWS)
        ]


def test_the_dtype_is_timed_on_the_first_layers_and_only_where_it_can_be(monkeypatch) -> None:
    from neuroomics_bridge.backbone import calibration

    timed = []
    monkeypatch.setattr(
        calibration, "calibrated_choice", lambda task, c, *, context: timed.append(context) or "float32"
    )
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.timed_cpu_dtype([(8, 8)]) == torch.float32 and not timed  # emulated bf16: never
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(hardware, "available_memory", lambda: 2 * 6 * 64 - 1)
    assert hardware.timed_cpu_dtype([(8, 8)]) == torch.bfloat16 and not timed  # two copies do not fit
    monkeypatch.setattr(hardware, "available_memory", lambda: 2**40)
    monkeypatch.setattr(hardware, "TIMED_FLOAT32_BYTES", 4 * 8 * 16 * 2)
    assert hardware.timed_cpu_dtype([(8, 16)] * 5) == torch.float32
    assert hardware.timed_cpu_dtype([(64, 64), (8, 8)]) == torch.float32  # over the budget: the first layer only
    assert [context["linears"] for context in timed] == ["2:[(8, 16)]"] * 2 + ["1:[(64, 64)]"] * 2


def test_a_backbone_loaded_without_a_dtype_takes_the_timed_one(tiny_model_dir, monkeypatch) -> None:
    from neuroomics_bridge.backbone import text

    asked = []
    monkeypatch.setattr(text, "timed_cpu_dtype", lambda shapes: asked.append(shapes) or torch.float32)
    monkeypatch.setattr(text, "default_dtype", lambda device, preferred: torch.bfloat16)  # a native-bf16 CPU
    model = TextBackbone.from_pretrained(tiny_model_dir, device="cpu").model
    assert model.dtype == torch.float32
    assert asked == [[(m.in_features, m.out_features) for m in model.modules() if type(m) is torch.nn.Linear]]
    assert TextBackbone.from_pretrained(tiny_model_dir, device="cpu", dtype="bfloat16").model.dtype == torch.bfloat16
    assert len(asked) == 1  # a dtype given is never timed


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


def test_the_packed_candidate_is_timed_only_where_onednn_packs_the_dtype_and_a_copy_fits(
    tiny_model_dir, monkeypatch, tmp_path
) -> None:
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
    monkeypatch.setattr(hardware, "PACKABLE_DTYPES", frozenset({torch.bfloat16}))  # as on AVX2 for bf16
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "unpackable"))  # an empty cache: timed afresh
    timed.clear()
    assert hardware.single_row_kernel(model) in ("aten", "onednn") and len(timed) == 2


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

    # Slurm: the job's cgroup sets the limit, the step's (where the process runs) a looser one
    gib_files = {"memory.current": f"{gib}\n", "memory.stat": "inactive_file 0\n"}
    slurm = _cgroup_files(tmp_path / "slurm", {"system.slice/job_7/memory.max": f"{3 * gib}\n",
                                               "system.slice/job_7/step_0/memory.max": f"{6 * gib}\n",
                                               **{f"system.slice/job_7/{n}": t for n, t in gib_files.items()},
                                               **{f"system.slice/job_7/step_0/{n}": t for n, t in gib_files.items()},
                                               "memory.max": "max\n"})  # fmt: skip
    assert hardware.cgroup_memory_headroom(slurm, "0::/system.slice/job_7/step_0\n") == 2 * gib
    v1_job = _cgroup_files(tmp_path / "slurm-v1", {"memory/job_7/memory.limit_in_bytes": f"{2 * gib}\n",
                                                   "memory/job_7/memory.usage_in_bytes": f"{gib}\n"})  # fmt: skip
    assert hardware.cgroup_memory_headroom(v1_job, "5:cpu,cpuacct:/\n4:memory:/job_7\n") == gib
    # without a cgroup namespace the host's path is not under the mount: the mount's root counts
    assert hardware.cgroup_memory_headroom(v2, "0::/docker/abc\n") == 4 * gib - (3 * gib - gib // 2)

    for host, headroom, available in (
        (8 * gib, gib, gib),
        (8 * gib, None, 8 * gib),
        (0, gib, gib),
        (gib, 8 * gib, gib),
    ):
        monkeypatch.setattr(hardware, "_host_memory_available", lambda host=host: host)
        monkeypatch.setattr(hardware, "cgroup_memory_headroom", lambda headroom=headroom: headroom)
        assert hardware.available_memory() == available
