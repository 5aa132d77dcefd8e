"""Prefix-stage training speed: tokens per second of the LM-loss steps, against today's baseline.

The demo's prefix stage (400 synthetic subjects, default encoders, projector + LoRA in the
default backbone, batches of 8 ``[prefix][prompt][report]`` rows) is trained for the same number
of steps six ways in one run:

- ``baseline``: SDPA attention and LoRA with Me-LLaMA-chat's dropout 0.05, batches in plain
  random order (the library before the kernel calibration);
- ``calibrated attention``: the attention implementation ``training_attention`` timed here,
  same LoRA;
- ``LoRA without dropout``: calibrated attention and the prefix stage's LoRA without dropout
  (:data:`neuroomics_bridge.training.args.PREFIX_LORA`), batches still run padded;
- ``library default``: the same, each right-padded batch run as one packed sequence of its real
  tokens (``backbone/packing.py``; ``TextBackbone.pack_rows``);
- ``length-grouped``: the same with ``group_by_length=True`` (an opt-in: less padding in
  attention, but it cost grounding on the demo, see ``training/prefix.py``);
- ``compiled``: the library default with ``compile_training=True`` (its first step, which
  compiles, is printed apart as ``first_step_seconds``: minutes with a cold inductor cache,
  seconds with a warm one).

Only the training steps are timed (a Lightning callback around each batch, the first one left
out as warm-up). The figure is real (unpadded) tokens per second: every variant but the
length-grouped one sees the same batches, that one batches of similar length; the padded
variants compute on the padding too. Freed memory is kept mapped as ``nob`` and the test workers
keep it (:func:`~neuroomics_bridge.allocator.keep_freed_memory`).
Goal: >= 1.5x the baseline.

Run: ``python benchmarks/bench_prefix_stage.py [--steps 12]``. Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from common import StepTimer, emit

from neuroomics_bridge import Bridge, LoRAConfig, TextBackbone
from neuroomics_bridge.allocator import keep_freed_memory
from neuroomics_bridge.backbone.attention import training_attention
from neuroomics_bridge.backbone.calibration import cpu_model
from neuroomics_bridge.datasets import synthetic_cohort
from neuroomics_bridge.encoders.cohort import default_cohort_encoder
from neuroomics_bridge.training import fit_alignment
from neuroomics_bridge.training.args import PREFIX_LORA


class PrefixStepTimer(StepTimer):
    """Counts a prefix-stage batch's real tokens: each subject's ``[prompt][report]`` in this
    epoch's layout, plus its soft tokens and EOS."""

    def __init__(self) -> None:
        super().__init__(self._real_tokens)
        self._lengths: list[int] = []  # [prompt][report] tokens per subject in this epoch

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self._lengths = module.stage_impl.row_lengths(module, trainer.current_epoch)

    def _real_tokens(self, trainer: Any, module: Any, batch: dict[str, Any]) -> int:
        soft_tokens_and_eos = module.bridge.adapters.projector.n_tokens + 1
        return sum(self._lengths[int(i)] + soft_tokens_and_eos for i in batch["index"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    keep_freed_memory()
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    raw = synthetic_cohort(400, seed=0)
    split = raw.split(seed=0)
    cohort = default_cohort_encoder(raw).fit_transform(raw, split.train)
    split = cohort.split(seed=0)
    split = dataclasses.replace(split, test=split.test.subset(split.test.subject_ids[:8]))  # a short end-of-fit score
    variants = {  # attention, LoRA, packed rows, group_by_length, compile_training
        "baseline": ("sdpa", LoRAConfig(), False, False, False),
        "calibrated attention": ("auto", LoRAConfig(), False, False, False),
        "LoRA without dropout": ("auto", PREFIX_LORA, False, False, False),
        "library default": ("auto", PREFIX_LORA, True, False, False),
        "length-grouped": ("auto", PREFIX_LORA, True, True, False),
        "compiled": ("auto", PREFIX_LORA, True, False, True),
    }
    tokens_per_second: dict[str, float] = {}
    for name, (attention, lora, pack_rows, group_by_length, compile_training) in variants.items():
        backbone = TextBackbone.from_pretrained("smollm2-135m-instruct")  # its own: LoRA goes into it
        backbone.pack_rows = pack_rows
        chosen = training_attention(backbone) if attention == "auto" else attention  # timed per layout
        torch.manual_seed(0)
        bridge = Bridge(backbone, {m: x.shape[1] for m, x in cohort.features.items()})
        timer = PrefixStepTimer()
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
                group_by_length=group_by_length,
                compile_training=compile_training,
                root_dir=Path(folder),
                enable_progress_bar=False,
                callbacks=[timer],
            )
        tokens_per_second[name] = timer.tokens_per_second
        emit(
            "prefix_stage",
            tokens_per_second[name] / tokens_per_second["baseline"],
            variant=name,
            attention=chosen,
            lora_dropout=lora.dropout,
            packed_rows=pack_rows,
            group_by_length=group_by_length,
            compile_training=compile_training,
            **timer.figures(),
            goal=1.5,
            cpu=cpu_model(),
            threads=torch.get_num_threads(),
        )


if __name__ == "__main__":
    main()
