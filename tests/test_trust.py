"""Trust: nothing loaded is ever executed, interrupted saves lose nothing, cards carry the notice."""

from __future__ import annotations

import ast
import os
import pickle
import re
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroomics_bridge import (
    RESEARCH_NOTICE,
    Bridge,
    BridgeConfig,
    DataError,
    GeneEncoder,
    NobError,
    PrecomputedEncoder,
)
from neuroomics_bridge.data import Cohort
from neuroomics_bridge.training.args import PRETRAIN_OPTIMIZER
from neuroomics_bridge.training.checkpoint import SafetensorsCheckpointIO

PACKAGE = Path(__file__).parents[1] / "neuroomics_bridge"
SMALL = BridgeConfig(embed_dim=8, head_hidden=8)


class Booby:
    """Unpickling this creates ``path``: the proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_no_code_path_can_unpickle() -> None:
    offenders = []
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "torch.serialization.load"):
                offenders.append(f"{file.name}: {name}")
            if name == "torch.load" and keywords.get("weights_only") != "True":
                offenders.append(f"{file.name}: torch.load without weights_only=True")
            if name.endswith("np.load") and keywords.get("allow_pickle") not in (None, "False"):
                offenders.append(f"{file.name}: np.load with allow_pickle")
    assert not offenders, offenders


def test_a_code_running_pickle_is_refused_by_every_loader_and_never_runs(tmp_path, tiny_backbone, make_bridge) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": Booby(marker)})
    bridge_dir = make_bridge({"gene": 4}, SMALL).save_pretrained(tmp_path / "bridge")
    (bridge_dir / "adapters.safetensors").write_bytes(payload)
    attempts = {
        "checkpoint": lambda p: SafetensorsCheckpointIO().load_checkpoint(p),
        "encoder": lambda p: GeneEncoder.load(p),
        "embeddings.npy": lambda p: PrecomputedEncoder(p).transform(["s1"]),
    }
    for name, load in attempts.items():
        path = tmp_path / (name if "." in name else f"{name}.bin")
        path.write_bytes(payload)
        with pytest.raises(NobError, match=re.escape(path.name)):
            load(path)
    with pytest.raises(NobError, match=r"adapters\.safetensors"):
        Bridge.from_pretrained(bridge_dir, backbone=tiny_backbone)
    assert not marker.exists()


def test_an_interrupted_save_keeps_the_previous_bridge_and_leaves_no_partial_file(
    tmp_path, tiny_backbone, make_bridge, monkeypatch
) -> None:
    import safetensors.torch

    bridge = make_bridge({"gene": 4}, SMALL)
    target = bridge.save_pretrained(tmp_path / "bridge")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with torch.no_grad():
        next(bridge.adapters.parameters()).add_(1.0)

    def dies_half_way(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"\x00" * 100)  # a partial file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        bridge.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge"]  # no temporary sibling left
    Bridge.from_pretrained(target, backbone=tiny_backbone)  # still loads


def test_an_interrupted_folder_swap_puts_the_previous_folder_back(tmp_path, monkeypatch) -> None:
    import os

    import neuroomics_bridge.io as nob_io

    target = tmp_path / "bundle"
    with nob_io.atomic_directory(target, kind="bundle", marker="weights") as folder:
        (folder / "weights").write_text("old")
    real_replace, calls = os.replace, []

    def interrupted_second_rename(source, destination) -> None:
        calls.append(destination)
        if len(calls) == 2:  # the new folder moving in: a Ctrl-C between the two renames
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(nob_io.os, "replace", interrupted_second_rename)
    with pytest.raises(KeyboardInterrupt), nob_io.atomic_directory(target, kind="bundle", marker="weights") as folder:
        (folder / "weights").write_text("new")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_saving_into_a_folder_of_other_files_is_refused_and_leaves_them(tmp_path, make_bridge) -> None:
    from neuroomics_bridge.retrieval import EmbeddingIndex

    project = tmp_path / "project"
    project.mkdir()
    (project / "analysis_notes.txt").write_text("mine")
    index = EmbeddingIndex.build(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    saves = {
        "EmbeddingIndex": lambda: index.save(project),
        "bridge": lambda: make_bridge({"gene": 4}, SMALL).save_pretrained(project),
        "cohort folder": lambda: Cohort(["a"], reports=["r"]).to_files(project),
    }
    for kind, save in saves.items():
        with pytest.raises(DataError, match=rf"project: expected a new or empty folder or a saved {kind}, found a fo"):
            save()
    assert [p.name for p in project.iterdir()] == ["analysis_notes.txt"]
    (project / "reports.csv").write_text("subject_id,report\na,r\n")  # now also a cohort assembled by hand
    with pytest.raises(DataError, match=r"project: expected .* a saved cohort folder, found .* \(no cohort.json\)"):
        Cohort(["b"], reports=["s"]).to_files(project)
    assert sorted(p.name for p in project.iterdir()) == ["analysis_notes.txt", "reports.csv"]
    for subject in ("b", "c"):  # a folder the library wrote is replaced
        saved = Cohort([subject], reports=["s"]).to_files(tmp_path / "saved")
    assert list(Cohort.from_files(saved).subject_ids) == ["c"]
    (project / "analysis_notes.txt").unlink()
    (project / "reports.csv").unlink()
    index.save(project)  # an empty folder is written, and a saved index replaced
    assert EmbeddingIndex.load(index.save(project)).ids == ["a", "b", "c"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_and_folders_get_the_mode_a_plain_open_would_give(tmp_path, make_bridge, umask) -> None:
    from neuroomics_bridge.io import atomic_write_text, current_umask

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "metrics.json", "{}")
        with open(tmp_path / "plain.txt", "w") as handle:  # the reference: what open() gives
            handle.write("x")
        (tmp_path / "plain").mkdir()
        saved = make_bridge({"gene": 4}, SMALL).save_pretrained(tmp_path / "bridge")  # an atomic folder
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(tmp_path / "metrics.json") == mode(tmp_path / "plain.txt") == 0o666 & ~umask
    assert mode(saved) == mode(tmp_path / "plain") == 0o777 & ~umask
    assert {mode(p) for p in saved.iterdir()} == {0o666 & ~umask}


def test_an_overwritten_file_keeps_its_mode_as_a_plain_open_keeps_it(tmp_path) -> None:
    from neuroomics_bridge.io import atomic_write_text

    for name in ("metrics.json", "plain.txt"):
        (tmp_path / name).write_text("old")
        (tmp_path / name).chmod(0o640)  # restricted by its owner, e.g. patient-level outputs
    atomic_write_text(tmp_path / "metrics.json", "{}")
    with open(tmp_path / "plain.txt", "w") as handle:  # the reference: what open() gives
        handle.write("x")

    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("metrics.json", "plain.txt")}
    assert modes == {"metrics.json": 0o640, "plain.txt": 0o640}
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_every_saved_card_carries_the_research_notice(tmp_path, tiny_backbone, make_bridge) -> None:
    bridge_dir = make_bridge({"gene": 4}, SMALL).save_pretrained(tmp_path / "bridge")
    assert RESEARCH_NOTICE in (bridge_dir / "README.md").read_text()
    from neuroomics_bridge.training.pretrain import save_pretrained_backbone

    model_dir = save_pretrained_backbone(tiny_backbone, tmp_path / "model", {"base_model": "tiny"})
    assert RESEARCH_NOTICE in (model_dir / "README.md").read_text()  # the LoRA card: test_instruct


def test_canaries_in_clinical_notes_never_come_out_after_scrubbing_and_training(tmp_path, tiny_model_dir) -> None:
    from neuroomics_bridge import TextBackbone
    from neuroomics_bridge.training.pretrain import continual_pretrain

    canaries = ("MRN: 73519046", "Dr. Zelda Quorra", "zq@canary.org")
    notes = [
        f"{canaries[0]}. Seen by {canaries[1]} ({canaries[2]}). Resting tremor; MRI shows atrophy {i}."
        for i in range(60)
    ]
    general = [f"The patient presents with resting tremor and bradykinesia {i}." for i in range(60)]

    def generated(scrub: set[str], name: str) -> str:
        backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
        optimizer = replace(PRETRAIN_OPTIMIZER, lr=1e-2)
        continual_pretrain(
            backbone, {"clinical": notes, "general": general}, {"clinical": 4, "general": 1}, scrub=scrub,
            max_steps=40, block_size=64, batch_size=4, optimizer=optimizer, heldout_fraction=0.2,
            root_dir=tmp_path / name, enable_progress_bar=False, precision="32-true",
        )  # fmt: skip
        prompts = ["MRN:", "Seen by", "Seen by Dr.", "(", "MRN: 7351"]
        return " | ".join(backbone.generate(prompts, max_new_tokens=24))

    leaked = generated(set(), "raw")
    assert any(c in leaked for c in canaries), leaked  # the control: unscrubbed, the model memorises them
    clean = generated({"clinical"}, "scrubbed")
    assert not any(c in clean or c.split()[-1] in clean for c in canaries), clean
