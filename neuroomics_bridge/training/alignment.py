"""Training the bridge's adapters in LLaVA's two stages, on Lightning.

:class:`AlignmentModule` holds what both stages share (the frozen backbone's handling, seeded
resumable steps, adapter-only checkpoints with any LoRA weights, the optimiser, test metrics and
the model card at the end); what differs lives in the stage's own module:
``training/contrastive.py`` (CLIP-style alignment of vectors and texts) and
``training/prefix.py`` (LLaVA-style soft prefix tokens trained by the report's LM loss).
The data side (subjects, folds, resumable order) is ``training/data.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import LightningModule, seed_everything

from neuroomics_bridge.adapters.config import LoRAConfig
from neuroomics_bridge.bridge import Bridge
from neuroomics_bridge.data.cohort import Cohort, CohortSplit
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.reports.prompts import CLASS_PROMPT, ClassPrompt
from neuroomics_bridge.training.args import Stage, optimizer_args, run_dir, stage_args
from neuroomics_bridge.training.contrastive import ContrastiveStage
from neuroomics_bridge.training.data import CohortDataModule
from neuroomics_bridge.training.prefix import CONTENT_WEIGHT, PREFIX_LAYOUTS, PrefixStage
from neuroomics_bridge.training.trainer import TrainableState, TrainingBackbone, build_trainer, mixed_precision

__all__ = ["AlignmentModule", "AlignmentResult", "CohortDataModule", "Stage", "fit_alignment"]

LORA_PREFIX = "backbone_lora."  # checkpoint keys of the backbone's LoRA weights


class AlignmentModule(LightningModule):
    """The training step and optimiser of one alignment stage; the backbone stays frozen.

    Parameters
    ----------
    bridge
        The bridge whose adapters train (its backbone's weights never do, LoRA aside).
    stage
        ``"contrastive"`` or ``"prefix"`` (see the module docstring).
    lr, weight_decay, warmup_fraction
        AdamW with linear warm-up then cosine decay; ``None``: the stage's default
        (:data:`~neuroomics_bridge.training.args.ALIGNMENT`).
    text_views
        Contrastive stage: pair subjects with sampled report views.
    prefix_layouts
        Prefix stage: the mixture of prompt layouts to train on.
    content_weight
        Prefix stage: the loss weight of rare report tokens (see :class:`PrefixStage`);
        ``None``: the stage's default.
    group_by_length
        Prefix stage: batch subjects of similar row length (less padding in attention, worse
        grounding on the demo; see :class:`PrefixStage`).
    seed
        Seeds the per-step randomness, so a resumed run continues exactly.
    class_prompt
        Class texts for the zero-shot evaluation and the probabilities in prompts.
    save_to
        Where the trained bridge is saved when fitting ends (``None``: not saved).
    lora
        Prefix stage: also train these LoRA adapters inside the backbone.
    attention
        Prefix stage: the backbone's attention implementation while training (``"sdpa"``,
        ``"eager"``); ``"auto"``: the faster here, timed once per machine
        (:func:`~neuroomics_bridge.backbone.attention.training_attention`).
    compile_training
        Prefix stage: run the training forwards through ``torch.compile``
        (:meth:`~neuroomics_bridge.backbone.text.TextBackbone.compiled_training`): steps about a
        quarter shorter on a 2-core CPU, after a first step that compiles for minutes (seconds
        with a warm inductor cache).
    """

    def __init__(
        self,
        bridge: Bridge,
        *,
        stage: Stage = "contrastive",
        lr: float | None = None,
        weight_decay: float | None = None,
        warmup_fraction: float | None = None,
        text_views: bool = True,
        prefix_layouts: Mapping[str, float] | None = None,
        content_weight: float | None = None,
        group_by_length: bool = False,
        seed: int = 0,
        class_prompt: ClassPrompt = CLASS_PROMPT,
        save_to: str | os.PathLike[str] | None = None,
        lora: LoRAConfig | None = None,
        attention: str = "auto",
        compile_training: bool = False,
    ) -> None:
        super().__init__()
        self.optimizer_args = optimizer_args(
            stage_args(stage).optimizer, lr=lr, weight_decay=weight_decay, warmup_fraction=warmup_fraction
        )
        self.stage_impl: ContrastiveStage | PrefixStage = (
            ContrastiveStage(text_views=text_views)
            if stage == "contrastive"
            else PrefixStage(
                layouts=dict(prefix_layouts or PREFIX_LAYOUTS),
                class_prompt=class_prompt,
                content_weight=CONTENT_WEIGHT if content_weight is None else content_weight,
                group_by_length=group_by_length,
            )
        )
        self.bridge, self.stage = bridge, stage
        self.adapters = bridge.adapters  # the only registered (trainable) module: checkpoints hold adapters only
        self.seed = seed
        self.class_prompt, self.save_to = class_prompt, save_to
        self.metrics: dict[str, float] = {}
        self.attention, self.compile_training = attention, compile_training
        # The caller's flags, captured before peft (which freezes every base weight) goes in,
        # are put back at teardown.
        self._callers_flags = [TrainableState.capture(module) for module in (self.adapters, bridge.backbone.model)]
        if lora is not None:
            if stage != "prefix":
                raise DataError("lora: LoRA inside the backbone trains in the prefix stage only")
            if bridge.lora is None:
                bridge.add_lora(lora)
            elif bridge.lora != lora:  # training goes on in the bridge's own adapter
                raise DataError(f"lora: the bridge already holds LoRA {bridge.lora}; got {lora} (pass it or None)")

    @property
    def lr(self) -> float:
        """The peak learning rate."""
        return self.optimizer_args.lr

    def _set_trainable(self) -> None:
        """This stage's ``requires_grad`` flags; the caller's are put back at :meth:`teardown`."""
        for name, parameter in self.adapters.named_parameters():
            parameter.requires_grad_(self.stage_impl.trains(name))
        lora = self.stage == "prefix" and self.bridge.lora is not None
        for name, parameter in self.bridge.backbone.model.named_parameters():  # frozen, but LoRA in the prefix stage
            parameter.requires_grad_(lora and "lora_" in name)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Adapters, plus the backbone's LoRA weights when it has them (never the backbone itself)."""
        state = super().state_dict(*args, **kwargs)
        state.update({f"{LORA_PREFIX}{k}": v for k, v in self.bridge.lora_state().items()})
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Inverse of :meth:`state_dict` (LoRA weights go back into the backbone)."""
        lora = {k.removeprefix(LORA_PREFIX): v for k, v in state_dict.items() if k.startswith(LORA_PREFIX)}
        if lora or self.bridge.lora is not None:
            self.bridge.load_lora_state(lora, source="checkpoint")
        rest = {k: v for k, v in state_dict.items() if not k.startswith(LORA_PREFIX)}
        return super().load_state_dict(rest, strict=strict, assign=assign)

    def setup(self, stage: str) -> None:
        """Let the losses gather across processes; set this stage's trainable parameters."""
        self.adapters.set_distributed(self.global_rank, self.trainer.world_size)
        if stage == "fit":
            self._set_trainable()

    def teardown(self, stage: str) -> None:
        """After fitting, give the caller's modules back their ``requires_grad`` flags and dtype."""
        if stage == "fit":
            for state in self._callers_flags:
                state.restore()

    def configure_callbacks(self) -> list[TrainingBackbone]:
        """The prefix stage trains through the backbone with the attention chosen for training."""
        if self.stage != "prefix":
            return []
        return [TrainingBackbone(self.bridge.backbone, self.attention, compiled=self.compile_training)]

    def on_fit_start(self) -> None:
        """The stage's preparation (text cache and centring, or the subjects' evidence)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, CohortDataModule):
            self.stage_impl.on_fit_start(self, datamodule)

    def on_fit_end(self) -> None:
        """Put the best weights in the bridge, calibrate, evaluate on the test fold, save if asked."""
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            self.load_state_dict(
                self.trainer.strategy.checkpoint_io.load_checkpoint(callback.best_model_path)["state_dict"]
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, CohortDataModule):
            return
        self.stage_impl.on_fit_end(self, datamodule)
        if not self.trainer.is_global_zero:
            return
        from neuroomics_bridge.evaluation.bridge_metrics import evaluate_bridge

        split = datamodule.split
        self.metrics = evaluate_bridge(
            self.bridge,
            split.test,
            stage=self.stage,
            class_prompt=self.class_prompt,
            classes=datamodule.cohort.labels,  # the whole cohort's: a class the test fold lacks included
        )
        card = self.bridge.card_info
        card.setdefault("metrics", {}).update(self.metrics)
        cohort = datamodule.cohort
        card["data_summary"] = (
            f"{cohort.n_subjects} subjects ({split.train.n_subjects} train, {split.val.n_subjects} validation, "
            f"{split.test.n_subjects} test); modalities {datamodule.modality_dims}; "
            f"labels {sorted(set(cohort.labels or []))}."
        )
        if self.save_to is not None:
            self.bridge.save_pretrained(self.save_to)

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        """Seed this step's randomness from ``(seed, step)``."""
        # Dropout draws come from (seed, step): a run resumed from a checkpoint continues exactly
        # as an uninterrupted one would have, whatever else consumed random numbers meanwhile.
        torch.manual_seed(self.seed * 1_000_003 + self.global_step)

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        """The stage's loss on a training batch."""
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        """The stage's loss on a validation batch."""
        return self._step(batch, "val")

    def _step(self, batch: dict[str, Any], fold: str) -> torch.Tensor:
        loss = self.stage_impl.loss(self, batch, fold)
        self.log(f"{fold}/loss", loss, prog_bar=True, batch_size=len(batch["text"]), sync_dist=fold == "val")
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable adapters (and LoRA weights), linear warm-up then cosine decay."""
        from transformers import get_cosine_schedule_with_warmup

        trainable = [p for p in self.adapters.parameters() if p.requires_grad]
        trainable += [p for p in self.bridge.backbone.model.parameters() if p.requires_grad]  # LoRA, if any
        args = self.optimizer_args
        optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay, betas=args.betas)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclasses.dataclass
class AlignmentResult:
    """Where a stage's checkpoints and logs went, its training history and test metrics."""

    best_checkpoint: Path | None
    last_checkpoint: Path | None
    log_dir: Path
    history: pd.DataFrame
    metrics: dict[str, float]


def fit_alignment(
    bridge: Bridge,
    cohort: Cohort,
    stage: Stage = "contrastive",
    *,
    split: CohortSplit | None = None,
    batch_size: int | None = None,
    max_epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup_fraction: float | None = None,
    text_views: bool = True,
    prefix_layouts: Mapping[str, float] | None = None,
    content_weight: float | None = None,
    group_by_length: bool = False,
    seed: int = 0,
    root_dir: str | os.PathLike[str] | None = None,
    ckpt_path: str | None = None,
    class_prompt: ClassPrompt = CLASS_PROMPT,
    lora: LoRAConfig | None = None,
    attention: str = "auto",
    compile_training: bool = False,
    **trainer_kwargs: Any,
) -> AlignmentResult:
    """Train one stage of ``bridge`` on an encoded ``cohort``; the best weights end up in ``bridge``.

    Defaults (batch size, epochs, optimiser) are the stage's in :data:`training.args.ALIGNMENT`.
    Seeded (``seed``); checkpoints ``last`` and best-on-validation under ``root_dir``
    (default ``nob-runs/align-<stage>``), resumable with ``ckpt_path="last"``; any other keyword goes
    to the Lightning ``Trainer`` (``strategy``, ``devices``, ``precision`` ...). ``lora`` (prefix
    stage) also trains LoRA adapters inside the backbone, saved with the bridge,
    ``content_weight`` weighs rare report tokens more in its loss, ``group_by_length`` batches
    subjects of similar row length, ``attention`` names the
    backbone's attention implementation while it trains (``"auto"``: the faster here), and
    ``compile_training`` runs its training forwards through ``torch.compile``. The test fold's
    metrics (zero-shot accuracy per modality with one ``class_prompt`` per label, see
    :func:`evaluate_bridge`; cross-modal recall; or the report perplexity gap) are returned and
    recorded for the model card.
    """
    defaults = stage_args(stage)
    seed_everything(seed, workers=True)
    root = Path(root_dir) if root_dir is not None else run_dir(f"align-{stage}")
    batch_size = defaults.batch_size if batch_size is None else batch_size
    data = CohortDataModule(cohort, split=split, batch_size=batch_size, seed=seed)
    if set(data.modality_dims) != set(bridge.modalities):
        raise DataError(
            f"cohort modalities {sorted(data.modality_dims)} differ from the bridge's {sorted(bridge.modalities)}"
        )
    module = AlignmentModule(
        bridge,
        stage=stage,
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=warmup_fraction,
        text_views=text_views,
        prefix_layouts=prefix_layouts,
        content_weight=content_weight,
        group_by_length=group_by_length,
        seed=seed,
        class_prompt=class_prompt,
        lora=lora,
        attention=attention,
        compile_training=compile_training,
    )
    trainer_kwargs.setdefault("precision", mixed_precision() if defaults.mixed_precision else "32-true")
    trainer_kwargs.setdefault("use_distributed_sampler", False)  # CohortDataModule shards by itself
    epochs = defaults.max_epochs if max_epochs is None else max_epochs
    trainer = build_trainer(root, max_epochs=epochs, **trainer_kwargs)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    callback = trainer.checkpoint_callback
    log_dir = Path(trainer.logger.log_dir) if trainer.logger else root
    history = pd.read_csv(log_dir / "metrics.csv") if (log_dir / "metrics.csv").is_file() else pd.DataFrame()
    return AlignmentResult(
        best_checkpoint=Path(callback.best_model_path) if callback and callback.best_model_path else None,
        last_checkpoint=Path(callback.last_model_path) if callback and callback.last_model_path else None,
        log_dir=log_dir,
        history=history,
        metrics=module.metrics,
    )
