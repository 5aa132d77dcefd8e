"""A training job that SIGKILLs itself mid-run, as a preempted cluster job dies (no clean-up, no
final checkpoint). Run by tests/test_preemption.py: ``python tests/preempted.py JOB MODEL_DIR ROOT``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from lightning.pytorch import Callback

sys.path.insert(0, str(Path(__file__).parents[1]))

KILL_AT_STEP = {"alignment": 9, "pretrain": 8}  # mid-epoch (alignment: 4 steps an epoch); after a checkpoint


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(job: str, model_dir: str, root: str) -> None:
    from tests.test_preemption import alignment_run, pretrain_run

    run = {"alignment": alignment_run, "pretrain": pretrain_run}[job]
    run(Path(model_dir), Path(root), callbacks=[KillAt(KILL_AT_STEP[job])])
    sys.exit("the job was not killed")


if __name__ == "__main__":
    main(*sys.argv[1:])
