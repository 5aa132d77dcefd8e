"""Kill and resume: a training process SIGKILLed mid-epoch resumes from ``last`` to the same
weights as an uninterrupted run (same seed), for alignment and for continual pretraining."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuroomics_bridge import TextBackbone
from neuroomics_bridge.bridge import Bridge
from neuroomics_bridge.config import BridgeConfig
from neuroomics_bridge.training import SafetensorsCheckpointIO
from tests.preempted import KILL_AT_STEP
from tests.steps import StepRecorder

WORKER = Path(__file__).parent / "preempted.py"


def alignment_run(model_dir: Path, root: Path, **kwargs) -> dict[str, torch.Tensor]:
    from neuroomics_bridge.datasets import synthetic_cohort
    from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder
    from neuroomics_bridge.training import fit_alignment

    cohort = synthetic_cohort(60, seed=3, cells_per_subject=8)
    encoders = {
        "gene": GeneEncoder(n_components=8, n_top_genes=300),
        "brain": BrainEncoder("mni-gm-64", n_components=8),
    }
    cohort = cohort.encode(encoders, fit_on=cohort.split(seed=0).train)
    torch.manual_seed(0)
    bridge = Bridge(
        TextBackbone.from_pretrained(model_dir, dtype="float32", device="cpu"),
        {"gene": 8, "brain": 8},
        BridgeConfig(embed_dim=16, head_hidden=32, prefix_tokens=2),
    )
    options = {"batch_size": 12, "max_epochs": 4, "root_dir": root, "enable_progress_bar": False}
    fit_alignment(bridge, cohort, "contrastive", split=cohort.split(seed=0), **options, **kwargs)
    return {k: v.clone() for k, v in bridge.adapters.state_dict().items()}


def pretrain_run(model_dir: Path, root: Path, **kwargs) -> dict[str, torch.Tensor]:
    from tests.test_pretrain import run

    backbone, _ = run(root.parent, model_dir, root.name, val_check_interval=6, **kwargs)
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


@pytest.mark.parametrize("job", ["alignment", "pretrain"])
def test_a_killed_job_resumes_to_the_uninterrupted_result(job: str, tmp_path, tiny_model_dir) -> None:
    run = {"alignment": alignment_run, "pretrain": pretrain_run}[job]
    killed = subprocess.run(
        [sys.executable, str(WORKER), job, str(tiny_model_dir), str(tmp_path / "killed")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[1],
    )
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL: no clean-up ran
    last = SafetensorsCheckpointIO().load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert 0 < last["global_step"] < KILL_AT_STEP[job]  # resuming really starts part-way
    recorder = StepRecorder()
    resumed = run(tiny_model_dir, tmp_path / "killed", ckpt_path="last", callbacks=[recorder])
    assert recorder.steps[0] == last["global_step"]  # picked up where the checkpoint left off
    assert recorder.steps == list(range(last["global_step"], recorder.steps[-1] + 1))
    whole = run(tiny_model_dir, tmp_path / "whole")
    for name, value in whole.items():
        # float32 rounding of the resumed path: ~1e-8 on weights, a few ulp on a fitted temperature of ~4
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-6, msg=name)
