"""Training hyper-parameters: one typed definition per concern, defaults defined once.

In the manner of litgpt's ``TrainArgs``: the Python entry points (:func:`fit_alignment`,
:func:`continual_pretrain`, :func:`instruction_tune`), the Lightning modules and the
LightningCLI recipes (``configs/*.yaml``) all resolve their defaults here, so the API and the CLI
cannot drift apart (a test pins it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from neuroomics_bridge.adapters.config import LoRAConfig
from neuroomics_bridge.errors import DataError

__all__ = [
    "ALIGNMENT",
    "INSTRUCT_EPOCHS",
    "INSTRUCT_OPTIMIZER",
    "PRETRAIN_MAX_STEPS",
    "PRETRAIN_OPTIMIZER",
    "RUNS_ROOT",
    "OptimizerArgs",
    "PREFIX_LORA",
    "Stage",
    "StageArgs",
    "optimizer_args",
    "run_dir",
    "stage_args",
]

Stage = Literal["contrastive", "prefix"]
RUNS_ROOT = Path("nob-runs")


@dataclasses.dataclass(frozen=True)
class OptimizerArgs:
    """AdamW and its schedule: peak ``lr``, ``weight_decay``, ``betas``, and the share of
    steps spent warming up linearly before the cosine decay (``warmup_fraction``)."""

    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """One alignment stage: subjects per batch, epochs, optimiser, and whether it trains in
    mixed precision (bf16 where the hardware runs it natively) or in float32."""

    batch_size: int
    max_epochs: int
    optimizer: OptimizerArgs
    mixed_precision: bool


ALIGNMENT: dict[str, StageArgs] = {
    # Only the projection heads train on cached text vectors: cheap epochs, many of them.
    "contrastive": StageArgs(batch_size=32, max_epochs=30, optimizer=OptimizerArgs(lr=1e-3), mixed_precision=False),
    # The LM loss through the frozen backbone: few, expensive epochs at a higher rate.
    "prefix": StageArgs(batch_size=8, max_epochs=6, optimizer=OptimizerArgs(lr=3e-3), mixed_precision=True),
}
# LLaVA's second step inside the prefix stage: Me-LLaMA-chat's rank and targets, without dropout.
# peft draws a dropout mask per adapted projection (q, k and v each get their own over the same
# input); on 2 CPU cores those draws took 0.5 s of a 2.7 s step, and 4 epochs on 280 subjects gave
# the same grounding without them (README, "Are reports about their subject?").
PREFIX_LORA = LoRAConfig(dropout=0.0)
# Continual pretraining: AdamW 0.9/0.95 with a cosine schedule after 5% warm-up, as Me-LLaMA and
# Meditron; weight decay 0.1 as Meditron (Me-LLaMA: 1e-5); lr 2e-5 as PMC-LLaMA (Me-LLaMA-13B:
# 8e-6 at 16x accumulation on 160 GPUs; a small model on a small corpus takes a larger rate).
PRETRAIN_OPTIMIZER = OptimizerArgs(lr=2e-5, weight_decay=0.1, betas=(0.9, 0.95))
PRETRAIN_MAX_STEPS = 1000
"""Optimizer steps of continual pretraining when none are given (its data is a stream: no epochs)."""
# LoRA instruction tuning as Me-LLaMA-chat's second stage, without weight decay on the adapter;
# lr 2e-4, the usual LoRA rate (Me-LLaMA-chat: 1e-5 for 3 epochs of 214k records at 13B/70B).
INSTRUCT_OPTIMIZER = OptimizerArgs(lr=2e-4, weight_decay=0.0)
INSTRUCT_EPOCHS = 3
"""Epochs of instruction tuning when neither epochs nor steps are given (Me-LLaMA-chat's three)."""


def stage_args(stage: str) -> StageArgs:
    """The defaults of an alignment stage; :class:`DataError` for an unknown stage name."""
    if stage not in ALIGNMENT:
        raise DataError(f"stage: expected one of {sorted(ALIGNMENT)}, got {stage!r}")
    return ALIGNMENT[stage]


def optimizer_args(
    defaults: OptimizerArgs,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    betas: tuple[float, float] | None = None,
    warmup_fraction: float | None = None,
) -> OptimizerArgs:
    """``defaults`` with every argument that is not ``None`` put in (an explicit 0 counts)."""
    given = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "warmup_fraction": warmup_fraction}
    return dataclasses.replace(defaults, **{key: value for key, value in given.items() if value is not None})


def run_dir(name: str) -> Path:
    """Where a run's checkpoints and logs go by default: ``nob-runs/<name>``."""
    return RUNS_ROOT / name
