"""Instruction-tuning speed: real (unpadded) tokens per second of the LoRA steps, four ways.

The shipped instruction records (``examples/data/instructions/train.jsonl``: QA, NER, relation
extraction, classification, summarisation, NLI, report writing) tune LoRA adapters in the
default backbone, batches of 8, for the same number of steps in one process:

- ``padded``: ``instruction_tune`` as ``nob instruct`` ran it before packed batches (calibrated
  attention, bf16 autocast where native, batches in seeded random order, each padded to its
  longest record and computed so);
- ``library default``: the same batches run packed (``backbone/packing.py``: no compute on the
  padding outside attention);
- ``length-grouped``: the library default with ``group_by_length=True`` (batches of similar
  length: less padding, other batches);
- ``compiled``: the library default with ``compile_training=True`` (its first step, which
  compiles, is printed apart as ``first_step_seconds``: minutes with a cold inductor cache,
  seconds with a warm one).

Only the training steps are timed (a Lightning callback around each batch, the first one left
out as warm-up). The ratio is each variant's real tokens per second over the padded one's. Freed
memory is kept mapped as ``nob`` keeps it (:func:`~neuroomics_bridge.allocator.keep_freed_memory`).

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
from neuroomics_bridge.allocator import keep_freed_memory
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
    keep_freed_memory()
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    records = read_instructions(RECORDS)
    variants = {  # packed rows, group_by_length, compile_training
        "padded": (False, False, False),
        "library default": (True, False, False),
        "length-grouped": (True, True, False),
        "compiled": (True, False, True),
    }
    tokens_per_second: dict[str, float] = {}
    for name, (pack_rows, group_by_length, compile_training) in variants.items():
        backbone = TextBackbone.from_pretrained("smollm2-135m-instruct")  # its own: LoRA goes into it
        backbone.pack_rows = pack_rows
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
            tokens_per_second[name] / tokens_per_second["padded"],
            variant=name,
            packed_rows=pack_rows,
            group_by_length=group_by_length,
            compile_training=compile_training,
            **timer.figures(),
            padding=round(1 - sum(timer.tokens[1:]) / sum(timer.padded[1:]), 3),
            cpu=cpu_model(),
            threads=torch.get_num_threads(),
        )


if __name__ == "__main__":
    main()
