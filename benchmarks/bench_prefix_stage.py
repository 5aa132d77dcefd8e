"""Prefix-stage training speed: tokens per second of the LM-loss steps, against today's baseline.

The demo's prefix stage (400 synthetic subjects, default encoders, projector + LoRA in the
default backbone, batches of 8 ``[prefix][prompt][report]`` rows) is trained for the same steps on
the same batches three ways in one run:

- ``baseline``: SDPA attention and LoRA with Me-LLaMA-chat's dropout 0.05 (the library before
  the kernel calibration);
- ``calibrated attention``: the attention implementation ``training_attention`` timed here,
  same LoRA;
- ``library default``: calibrated attention and the prefix stage's LoRA without dropout
  (:data:`neuroomics_bridge.training.args.PREFIX_LORA`).

Only the training steps are timed (a Lightning callback around each batch, the first one left
out as warm-up); every variant sees the same rows, so the ratio of steps per second is the ratio
of tokens per second. Goal: >= 1.5x the baseline.

Run: ``python benchmarks/bench_prefix_stage.py [--steps 12]``. Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from neuroomics_bridge import Bridge, LoRAConfig, TextBackbone
from neuroomics_bridge.backbone.attention import training_attention
from neuroomics_bridge.backbone.calibration import cpu_model
from neuroomics_bridge.datasets import synthetic_cohort
from neuroomics_bridge.encoders.cohort import default_cohort_encoder
from neuroomics_bridge.training import fit_alignment
from neuroomics_bridge.training.args import PREFIX_LORA


class StepTimer(Callback):
    """Wall time of each training batch (forward, backward, optimiser step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.seconds.append(time.perf_counter() - self._started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    raw = synthetic_cohort(400, seed=0)
    split = raw.split(seed=0)
    cohort = default_cohort_encoder(raw).fit_transform(raw, split.train)
    split = cohort.split(seed=0)
    split = dataclasses.replace(split, test=split.test.subset(split.test.subject_ids[:8]))  # a short end-of-fit score
    chosen = training_attention(TextBackbone.from_pretrained("smollm2-135m-instruct"))
    variants = {
        "baseline": ("sdpa", LoRAConfig()),
        "calibrated attention": ("auto", LoRAConfig()),
        "library default": ("auto", PREFIX_LORA),
    }
    per_step: dict[str, float] = {}
    for name, (attention, lora) in variants.items():
        backbone = TextBackbone.from_pretrained("smollm2-135m-instruct")  # its own: LoRA goes into it
        torch.manual_seed(0)
        bridge = Bridge(backbone, {m: x.shape[1] for m, x in cohort.features.items()})
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as folder:
            fit_alignment(
                bridge,
                cohort,
                "prefix",
                split=split,
                max_epochs=1,
                limit_train_batches=args.steps,
                limit_val_batches=1,
                num_sanity_val_steps=0,
                lora=lora,
                attention=attention,
                root_dir=Path(folder),
                enable_progress_bar=False,
                callbacks=[timer],
            )
        per_step[name] = statistics.median(timer.seconds[1:])
        print(
            json.dumps(
                {
                    "benchmark": "prefix_stage",
                    "variant": name,
                    "attention": chosen if attention == "auto" else attention,
                    "lora_dropout": lora.dropout,
                    "seconds_per_step": round(per_step[name], 3),
                    "ratio": round(per_step["baseline"] / per_step[name], 2),
                    "goal": 1.5,
                    "cpu": cpu_model(),
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
