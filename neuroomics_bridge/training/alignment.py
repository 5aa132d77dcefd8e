"""Training the bridge's adapters in LLaVA's two stages, on Lightning.

``stage="contrastive"``: the backbone is frozen and each report is encoded once (then read from
the on-disk text cache), so an epoch costs only the projection heads; every modality is aligned
with its subject's report, and modality pairs with each other, by open_clip's losses.
``stage="prefix"``: the backbone stays frozen; the prefix projector learns, through the
language-modelling loss on the report (prompt and prefix positions masked), to turn a subject's
vectors into soft tokens the LLM can read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule, LightningModule, seed_everything
from torch.utils.data import DataLoader, Dataset, Sampler

from neuroomics_bridge.adapters.config import LoRAConfig
from neuroomics_bridge.bridge import Bridge
from neuroomics_bridge.data.cohort import Cohort, CohortSplit
from neuroomics_bridge.data.text import report_views, text_ids
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.reports.prompts import CLASS_PROMPT, ClassPrompt
from neuroomics_bridge.training.args import Stage, optimizer_args, run_dir, stage_args
from neuroomics_bridge.training.trainer import TrainableState, build_trainer, mixed_precision

__all__ = ["AlignmentModule", "AlignmentResult", "CohortDataModule", "Stage", "fit_alignment"]

LORA_PREFIX = "backbone_lora."  # checkpoint keys of the backbone's LoRA weights


class SubjectDataset(Dataset):
    """One item per subject: modality vectors (absent rows zero), presence flags and the report."""

    def __init__(self, cohort: Cohort) -> None:
        if cohort.reports is None:
            raise DataError("the cohort has no reports: alignment needs one text per subject")
        self.features = {m: torch.from_numpy(np.nan_to_num(x)) for m, x in cohort.features.items()}
        self.present = {m: torch.from_numpy(cohort.present(m)) for m in cohort.features}
        self.reports = list(cohort.reports)

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "features": {m: x[index] for m, x in self.features.items()},
            "present": {m: p[index] for m, p in self.present.items()},
            "text": self.reports[index],
        }


class SubjectSampler(Sampler[int]):
    """This process's share of a per-epoch order of the subjects.

    The order is a permutation drawn from ``(seed, epoch)`` (or the identity without
    ``shuffle``); process ``rank`` of ``world_size`` takes every ``world_size``-th subject from
    position ``rank`` on, so the union of the processes' k-th batches is exactly the k-th batch
    of a single-process run with ``world_size`` times the batch size. Lightning calls
    ``set_epoch`` before every epoch, so a resumed run replays the order an uninterrupted run
    would have used.
    """

    def __init__(self, size: int, *, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            )
        else:
            order = torch.arange(self.size)
        padded = order.tolist() + order.tolist()[: len(self) * self.world_size - self.size]
        return iter(padded[self.rank :: self.world_size])


class CohortDataModule(LightningDataModule):
    """Train/validation/test folds of an encoded cohort, batched by subject.

    It shards the folds across processes itself (:class:`SubjectSampler`), so the trainer runs
    with ``use_distributed_sampler=False``.
    """

    def __init__(
        self, cohort: Cohort, *, split: CohortSplit | None = None, batch_size: int = 32, seed: int = 0
    ) -> None:
        super().__init__()
        if not cohort.features:
            raise DataError("the cohort has no encoded modalities: run Cohort.encode first")
        self.cohort, self.batch_size, self.seed = cohort, batch_size, seed
        self.split = split or cohort.split(seed=seed)
        self.modality_dims = {m: int(x.shape[1]) for m, x in cohort.features.items()}

    def _loader(self, fold: Cohort, *, shuffle: bool) -> DataLoader:
        dataset = SubjectDataset(fold)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = SubjectSampler(len(dataset), seed=self.seed, shuffle=shuffle, rank=rank, world_size=world)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split.test, shuffle=False)

    def texts(self) -> list[str]:
        """Every text the contrastive stage can meet: training report views, validation reports."""
        views = [view for report in self.split.train.reports or [] for view in report_views(report)]
        return views + list(self.split.val.reports or [])


class AlignmentModule(LightningModule):
    """The training step and optimiser of one alignment stage; the backbone stays frozen.

    In the contrastive stage each training subject is paired, in each epoch, with one view of its
    report (the whole report or one of its sentences, drawn from the seed, epoch and subject);
    identical texts in a batch are not negatives of each other. Validation uses whole reports.
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
        seed: int = 0,
        class_prompt: ClassPrompt = CLASS_PROMPT,
        save_to: str | os.PathLike[str] | None = None,
        lora: LoRAConfig | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_args = optimizer_args(
            stage_args(stage).optimizer, lr=lr, weight_decay=weight_decay, warmup_fraction=warmup_fraction
        )
        self.bridge, self.stage = bridge, stage
        self.adapters = bridge.adapters  # the only registered (trainable) module: checkpoints hold adapters only
        self.text_views, self.seed = text_views, seed
        self.class_prompt, self.save_to = class_prompt, save_to
        self.metrics: dict[str, float] = {}
        if lora is not None:
            if stage != "prefix":
                raise DataError("lora: LoRA inside the backbone trains in the prefix stage only")
            if bridge.lora is None:
                bridge.add_lora(lora)
        self._callers_flags: list[TrainableState] = []

    def _set_trainable(self) -> None:
        """This stage's ``requires_grad`` flags; the caller's are put back at :meth:`teardown`."""
        modules = (self.adapters, self.bridge.backbone.model)
        self._callers_flags = [TrainableState.capture(module) for module in modules]
        training_prefix = self.stage == "prefix"
        for name, parameter in self.adapters.named_parameters():
            parameter.requires_grad_(name.startswith("projector.") == training_prefix)
        for name, parameter in self.bridge.backbone.model.named_parameters():  # frozen, but LoRA in the prefix stage
            parameter.requires_grad_(training_prefix and self.bridge.lora is not None and "lora_" in name)

    @property
    def lr(self) -> float:
        return self.optimizer_args.lr

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Adapters, plus the backbone's LoRA weights when it has them (never the backbone itself)."""
        state = super().state_dict(*args, **kwargs)
        state.update({f"{LORA_PREFIX}{k}": v for k, v in self.bridge.lora_state().items()})
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        lora = {k.removeprefix(LORA_PREFIX): v for k, v in state_dict.items() if k.startswith(LORA_PREFIX)}
        if lora or self.bridge.lora is not None:
            self.bridge.load_lora_state(lora, source="checkpoint")
        rest = {k: v for k, v in state_dict.items() if not k.startswith(LORA_PREFIX)}
        return super().load_state_dict(rest, strict=strict, assign=assign)

    def setup(self, stage: str) -> None:
        self.adapters.set_distributed(self.global_rank, self.trainer.world_size)
        if stage == "fit":
            self._set_trainable()

    def teardown(self, stage: str) -> None:
        for state in self._callers_flags:
            state.restore()
        self._callers_flags = []

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.stage == "contrastive" and datamodule is not None:
            training_texts = self.bridge.text_encoder.encode(list(datamodule.split.train.reports or []))
            self.adapters.text_center.copy_(training_texts.mean(dim=0))
            self.bridge.text_encoder.encode(datamodule.texts())  # encode every text view once, up front

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
        split = datamodule.split
        if self.stage == "contrastive":
            self.bridge.calibrate(split.train)
        if not self.trainer.is_global_zero:
            return
        from neuroomics_bridge.evaluation import evaluate_bridge

        self.metrics = evaluate_bridge(self.bridge, split.test, stage=self.stage, class_prompt=self.class_prompt)
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
        # Dropout draws come from (seed, step): a run resumed from a checkpoint continues exactly
        # as an uninterrupted one would have, whatever else consumed random numbers meanwhile.
        torch.manual_seed(self.seed * 1_000_003 + self.global_step)

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        return self._step(batch, "val")

    def _step(self, batch: dict[str, Any], fold: str) -> torch.Tensor:
        size = len(batch["text"])
        if self.stage == "contrastive":
            texts = list(batch["text"])
            if fold == "train" and self.text_views:  # a subject's view depends on (seed, epoch, subject) only
                texts = [
                    str(np.random.default_rng([self.seed, self.current_epoch, int(i)]).choice(report_views(text)))
                    for i, text in zip(batch["index"], texts, strict=True)
                ]
            text = self.bridge.text_encoder.encode(texts).to(self.device)
            groups = torch.tensor(text_ids(texts), device=self.device)
            output = self.adapters.contrastive(batch["features"], batch["present"], text, groups)
            for pair, value in output.parts.items():
                self.log(f"{fold}/loss_{pair}", value, batch_size=size, sync_dist=fold == "val")
            loss = output.loss
        else:
            loss = self._language_modelling_loss(batch)
        self.log(f"{fold}/loss", loss, prog_bar=True, batch_size=size, sync_dist=fold == "val")
        return loss

    def _language_modelling_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        nll, tokens = self.bridge.report_nll(batch["features"], batch["present"], batch["text"])
        return nll.sum() / tokens.sum()

    def configure_optimizers(self) -> dict[str, Any]:
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
    seed: int = 0,
    root_dir: str | os.PathLike[str] | None = None,
    ckpt_path: str | None = None,
    class_prompt: ClassPrompt = CLASS_PROMPT,
    lora: LoRAConfig | None = None,
    **trainer_kwargs: Any,
) -> AlignmentResult:
    """Train one stage of ``bridge`` on an encoded ``cohort``; the best weights end up in ``bridge``.

    Defaults (batch size, epochs, optimiser) are the stage's in :data:`training.args.ALIGNMENT`.
    Seeded (``seed``); checkpoints ``last`` and best-on-validation under ``root_dir``
    (default ``nob-runs/align-<stage>``), resumable with ``ckpt_path="last"``; any other keyword goes
    to the Lightning ``Trainer`` (``strategy``, ``devices``, ``precision`` ...). ``lora`` (prefix
    stage) also trains LoRA adapters inside the backbone, saved with the bridge. The test fold's
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
        seed=seed,
        class_prompt=class_prompt,
        lora=lora,
    )
    trainer_kwargs.setdefault("precision", "32-true" if stage == "contrastive" else mixed_precision())
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
