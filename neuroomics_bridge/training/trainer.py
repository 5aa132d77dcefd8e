"""One way to build a Lightning Trainer for every training job in the library.

Checkpoints ``last`` and best-on-validation go to ``<root>/checkpoints`` as safetensors (so
``ckpt_path="last"`` resumes even from a new process), metrics to a CSV logger under
``<root>/logs``; the progress bar shows only on a terminal. Strategy, devices and the rest come
from the caller's keyword arguments (and from YAML through LightningCLI), never from code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from neuroomics_bridge.backbone.attention import ATTENTION_CANDIDATES, attention_implementation, training_attention
from neuroomics_bridge.backbone.hardware import cpu_has_native_bf16
from neuroomics_bridge.backbone.text import TextBackbone
from neuroomics_bridge.errors import ConfigError
from neuroomics_bridge.training.checkpoint import SafetensorsCheckpointIO

__all__ = [
    "HandBackOnFailure",
    "TrainableState",
    "TrainingBackbone",
    "build_trainer",
    "checkpoint_callback",
    "mixed_precision",
]


def mixed_precision() -> str:
    """Lightning's ``precision`` for this machine.

    Returns
    -------
    str
        ``"bf16-mixed"`` where the hardware runs bf16 natively; otherwise ``"16-mixed"`` on a
        CUDA GPU and ``"32-true"`` on CPU.
    """
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def checkpoint_callback(root_dir: str | os.PathLike[str], monitor: str = "val/loss") -> ModelCheckpoint:
    """Keep ``last.ckpt`` and the best checkpoint on ``monitor`` in ``<root_dir>/checkpoints``."""
    return ModelCheckpoint(
        dirpath=Path(root_dir) / "checkpoints",
        filename="best-{epoch:03d}",
        monitor=monitor,
        mode="min",
        save_top_k=1,
        save_last=True,
    )


def build_trainer(root_dir: str | os.PathLike[str], *, monitor: str = "val/loss", **trainer_kwargs: Any) -> Trainer:
    """A Trainer with the library's checkpointing, logging and progress conventions.

    Parameters
    ----------
    root_dir
        Holds ``checkpoints/`` and the CSV ``logs/``.
    monitor
        The metric the best checkpoint is chosen on (lowest wins).
    **trainer_kwargs
        Passed to ``Trainer``; ``callbacks`` and ``plugins`` are added to the library's (the
        checkpoints, and :class:`HandBackOnFailure`), a ``logger`` replaces the CSV logger.
        Defaults: one device, accelerator ``"auto"``, logging every step, no model summary, a
        progress bar only on a terminal.
    """
    callbacks = [checkpoint_callback(root_dir, monitor), HandBackOnFailure(), *trainer_kwargs.pop("callbacks", [])]
    trainer_kwargs.setdefault("enable_progress_bar", sys.stderr.isatty())
    trainer_kwargs.setdefault("enable_model_summary", False)
    trainer_kwargs.setdefault("log_every_n_steps", 1)
    trainer_kwargs.setdefault("accelerator", "auto")
    trainer_kwargs.setdefault("devices", 1)
    return Trainer(
        default_root_dir=root_dir,
        callbacks=callbacks,
        logger=trainer_kwargs.pop("logger", CSVLogger(root_dir, name="logs")),
        plugins=[SafetensorsCheckpointIO(), *trainer_kwargs.pop("plugins", [])],
        **trainer_kwargs,
    )


class HandBackOnFailure(Callback):
    """Runs the module's ``teardown("fit")`` when fitting fails or is interrupted.

    Lightning calls a module's ``teardown`` only after a fit that ends, and the library's modules
    give the caller's backbone back its dtype and ``requires_grad`` flags there; without this, a
    Ctrl-C or an error mid-fit would leave a bf16 backbone in float32 (twice the memory).
    """

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        """Hand the caller's modules back as the module's teardown does."""
        pl_module.teardown("fit")


@dataclasses.dataclass
class TrainableState:
    """A module's ``requires_grad`` flags and floating dtype, to hand the module back as it came.

    Training sets flags (and may keep float32 master weights) on the caller's objects; a
    trainer captures this state first and calls :meth:`restore` when fitting ends. Parameters are
    tracked as objects, not names, so a weight that peft wraps (``q_proj.weight`` becomes
    ``q_proj.base_layer.weight``) is still restored; parameters added later (LoRA weights) keep
    their own flags.
    """

    flags: list[tuple[torch.nn.Parameter, bool]]
    dtype: torch.dtype | None

    @classmethod
    def capture(cls, module: torch.nn.Module) -> TrainableState:
        """The flags and the floating dtype (of the first floating parameter) of ``module`` now."""
        flags = [(p, p.requires_grad) for p in module.parameters()]
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        return cls(flags, dtype)

    def restore(self) -> None:
        """Put the captured flags back and cast floating weights back to the captured dtype."""
        for parameter, flag in self.flags:
            parameter.requires_grad_(flag)
            if self.dtype is not None and parameter.is_floating_point() and parameter.dtype != self.dtype:
                parameter.data = parameter.data.to(self.dtype)


class TrainingBackbone(Callback):
    """How a backbone runs while a module trains through it, put back as it was afterwards.

    Parameters
    ----------
    backbone
        The backbone the loss runs through.
    attention
        ``"sdpa"``, ``"eager"``, or ``"auto"``: the faster for training steps on this machine
        (:func:`~neuroomics_bridge.backbone.attention.training_attention`, timed when fitting
        starts, in the dtype the backbone has then).
    compiled
        Run the training forwards through ``torch.compile``
        (:meth:`~neuroomics_bridge.backbone.text.TextBackbone.compiled_training`): faster steps
        after a first step that compiles.
    """

    def __init__(self, backbone: TextBackbone, attention: str = "auto", *, compiled: bool = False) -> None:
        if attention != "auto" and attention not in ATTENTION_CANDIDATES:
            raise ConfigError(f"attention: expected 'auto' or one of {list(ATTENTION_CANDIDATES)}, got {attention!r}")
        self.backbone, self.attention, self.compiled = backbone, attention, compiled
        self._switched = contextlib.ExitStack()

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Switch the attention (and compile) for fitting."""
        if stage == "fit":
            chosen = training_attention(self.backbone) if self.attention == "auto" else self.attention
            self._switched.enter_context(attention_implementation(self.backbone.model, chosen))
            if self.compiled:
                self._switched.enter_context(self.backbone.compiled_training())

    def teardown(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Put the backbone back when fitting ends."""
        if stage == "fit":
            self._switched.close()

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        """Put the backbone back when fitting fails (Lightning calls no ``teardown`` then)."""
        self._switched.close()
