"""Config-driven entry points: what ``nob align fit --config configs/....yaml`` builds.

LightningCLI instantiates these two factories from YAML (plain, serialisable arguments only)
and links the data's modality widths into the model. The trainer gets the library's
conventions: safetensors checkpoints (``last`` and best) under ``trainer.default_root_dir``, a
CSV logger, a progress bar only on a terminal; ``trainer.strategy`` / ``devices`` /
``num_nodes`` come from the YAML (``ddp``, ``fsdp``, ``deepspeed`` on clusters).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from neuroomics_bridge.config import BackboneConfig, BridgeConfig
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.training.alignment import AlignmentModule, CohortDataModule, Stage
from neuroomics_bridge.training.checkpoint import SafetensorsCheckpointIO
from neuroomics_bridge.training.trainer import checkpoint_callback

__all__ = ["alignment_data", "alignment_model", "AlignmentCLI", "DEFAULT_ROOT"]

DEFAULT_ROOT = "nob-runs/align"


def alignment_data(
    data_dir: str | None = None,
    synthetic_subjects: int = 400,
    seed: int = 0,
    gene_components: int = 32,
    gene_top_genes: int = 2000,
    brain_atlas: str = "mni-gm-64",
    brain_components: int = 32,
    residualize: Sequence[str] = ("age", "sex", "site"),
    batch_size: int = 32,
) -> CohortDataModule:
    """A cohort folder (``Cohort.to_files`` layout) or, without ``data_dir``, a synthetic cohort,
    encoded with encoders fitted on its training fold and residualised for ``residualize``."""
    from neuroomics_bridge.data.cohort import Cohort
    from neuroomics_bridge.datasets import synthetic_cohort
    from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder

    cohort = Cohort.from_files(data_dir) if data_dir else synthetic_cohort(synthetic_subjects, seed=seed)
    split = cohort.split(seed=seed)
    encoders: dict[str, Any] = {}
    if cohort.genes is not None:
        encoders["gene"] = GeneEncoder(n_components=gene_components, n_top_genes=gene_top_genes)
    if cohort.brains is not None:
        encoders["brain"] = BrainEncoder(brain_atlas, n_components=brain_components)
    covariates = [c for c in residualize if cohort.covariates is not None and c in cohort.covariates]
    cohort = cohort.encode(encoders, fit_on=split.train, residualize=covariates)
    return CohortDataModule(cohort, split=cohort.split(seed=seed), batch_size=batch_size, seed=seed)


def alignment_model(
    backbone: BackboneConfig | None = None,
    bridge: BridgeConfig | None = None,
    stage: Stage = "contrastive",
    init_from: str | None = None,
    save_to: str = "nob-runs/bridge",
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.05,
    seed: int = 0,
    modality_dims: dict[str, int] | None = None,
) -> AlignmentModule:
    """The alignment module of one stage: a new bridge on ``backbone``, or the saved bridge at
    ``init_from`` (e.g. the contrastive stage's output for the prefix stage); the trained bridge
    is saved to ``save_to`` when fitting ends."""
    from neuroomics_bridge.bridge import Bridge

    backbone_model = (backbone or BackboneConfig()).build()
    if init_from:
        model = Bridge.from_pretrained(init_from, backbone=backbone_model)
        if modality_dims and modality_dims != model.modality_dims:
            raise DataError(
                f"{init_from}: the bridge expects modalities {model.modality_dims}, the data has {modality_dims}"
            )
    else:
        if not modality_dims:
            raise DataError("alignment_model: modality_dims is required without init_from (linked from the data)")
        model = Bridge(backbone_model, modality_dims, bridge or BridgeConfig())
    return AlignmentModule(
        model,
        stage=stage,
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=warmup_fraction,
        seed=seed,
        save_to=save_to,
    )


class AlignmentCLI(LightningCLI):
    """LightningCLI for the alignment stages with the library's trainer conventions."""

    def __init__(self, args: Sequence[str] | None = None, *, run: bool = True) -> None:
        super().__init__(
            alignment_model,
            alignment_data,
            args=list(args) if args is not None else None,
            run=run,
            trainer_defaults={
                "default_root_dir": DEFAULT_ROOT,
                "enable_progress_bar": sys.stderr.isatty(),
                "enable_model_summary": False,
                "log_every_n_steps": 1,
                "use_distributed_sampler": False,  # CohortDataModule shards the folds itself
            },
            save_config_kwargs={"overwrite": True},
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.modality_dims", "model.modality_dims", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        section = self.config_init.get(self.subcommand, self.config_init) if self.subcommand else self.config_init
        trainer = section.get("trainer") or {}
        root = Path(trainer.get("default_root_dir") or DEFAULT_ROOT)
        kwargs["callbacks"] = [*(trainer.get("callbacks") or []), checkpoint_callback(root)]
        kwargs["plugins"] = [SafetensorsCheckpointIO(), *(trainer.get("plugins") or [])]
        if trainer.get("logger") in (None, True):
            kwargs["logger"] = CSVLogger(root, name="logs")
        return super().instantiate_trainer(**kwargs)
