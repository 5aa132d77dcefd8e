"""Instruction-tuning speed: real (unpadded) tokens per second of the LoRA steps, three ways.

The shipped instruction records (``examples/data/instructions/train.jsonl``: QA, NER, relation
extraction, classification, summarisation, NLI, report writing) tune LoRA adapters in the
default backbone, batches of 8, for the same number of steps in one process:

- ``library default``: ``instruction_tune`` as ``nob instruct`` runs it (calibrated attention,
  bf16 autocast where native, batches in seeded random order);
- ``length-grouped``: the same with ``group_by_length=True`` (batches of similar length: less
  padding, other batches);
- ``compiled``: the library default with ``compile_training=True`` (its first step, which
  compiles, is printed apart as ``first_step_seconds``: minutes with a cold inductor cache,
  seconds with a warm one).

Only the training steps are timed (a Lightning callback around each batch, the first one left
out as warm-up). The ratio is each variant's real tokens per second over the library default's.

Run: ``python benchmarks/bench_instruct.py [--steps 12]``. Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from common import StepTimer, emit

from neuroomics_bridge import TextBackbone
from neuroomics_bridge.backbone.calibration import cpu_model
from neuroomics_bridge.data.instructions import read_instructions
from neuroomics_bridge.training.instruct import instruction_tune

RECORDS = Path(__file__).parents[1] / "examples" / "data" / "instructions" / "train.jsonl"


class InstructStepTimer(StepTimer):
    """Counts an instruction batch's real tokens (its attention mask) and keeps its padded size."""

    def __init__(self) -> None:
        super().__init__(self._real_tokens)
        self.padded: list[int] = []

    def _real_tokens(self, trainer: Any, module: Any, batch: dict[str, Any]) -> int:
        self.padded.append(batch["attention_mask"].numel())
        return int(batch["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    records = read_instructions(RECORDS)
    variants = {  # group_by_length, compile_training
        "library default": (False, False),
        "length-grouped": (True, False),
        "compiled": (False, True),
    }
    tokens_per_second: dict[str, float] = {}
    for name, (group_by_length, compile_training) in variants.items():
        backbone = TextBackbone.from_pretrained("smollm2-135m-instruct")  # its own: LoRA goes into it
        timer = InstructStepTimer()
        with tempfile.TemporaryDirectory() as folder:
            instruction_tune(
                backbone,
                records,
                max_epochs=1,
                limit_train_batches=args.steps,
                group_by_length=group_by_length,
                compile_training=compile_training,
                root_dir=folder,
                enable_progress_bar=False,
                callbacks=[timer],
            )
        tokens_per_second[name] = timer.tokens_per_second
        emit(
            "instruction_tuning",
            tokens_per_second[name] / tokens_per_second["library default"],
            variant=name,
            group_by_length=group_by_length,
            compile_training=compile_training,
            **timer.figures(),
            padding=round(1 - sum(timer.tokens[1:]) / sum(timer.padded[1:]), 3),
            cpu=cpu_model(),
            threads=torch.get_num_threads(),
        )


if __name__ == "__main__":
    main()
