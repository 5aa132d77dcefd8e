"""A Lightning callback that records which training steps a fit ran, so a resume test can check
that the resumed fit started where the checkpoint left off instead of training from scratch."""

from __future__ import annotations

from lightning.pytorch import Callback


class StepRecorder(Callback):
    """The global step and epoch at the start of every training batch a fit runs."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.epochs: list[int] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        self.steps.append(trainer.global_step)
        self.epochs.append(trainer.current_epoch)
