"""Config-driven entry points: what ``nob align|pretrain|instruct fit --config configs/....yaml`` builds.

LightningCLI instantiates a model and a data factory from YAML (plain, serialisable arguments
only) and links what the data knows into the model (modality widths; the loaded backbone). The
trainer gets the library's conventions: safetensors checkpoints (``last`` and best) under
``trainer.default_root_dir``, a CSV logger, a progress bar only on a terminal; ``trainer.strategy`` / ``devices`` /
``num_nodes`` come from the YAML (``ddp``, ``fsdp``, ``deepspeed`` on clusters).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from neuroomics_bridge.adapters.config import BridgeConfig, LoRAConfig
from neuroomics_bridge.backbone.config import BackboneConfig
from neuroomics_bridge.backbone.text import TextBackbone
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.training.alignment import AlignmentModule, CohortDataModule
from neuroomics_bridge.training.args import (
    INSTRUCT_EPOCHS,
    INSTRUCT_OPTIMIZER,
    PRETRAIN_MAX_STEPS,
    PRETRAIN_OPTIMIZER,
    Stage,
    run_dir,
    stage_args,
)
from neuroomics_bridge.training.checkpoint import SafetensorsCheckpointIO
from neuroomics_bridge.training.instruct import InstructionDataModule, InstructionTuneModule
from neuroomics_bridge.training.pretrain import ContinualPretrainModule, PretrainDataModule
from neuroomics_bridge.training.trainer import HandBackOnFailure, checkpoint_callback, mixed_precision

__all__ = [
    "AlignmentCLI",
    "InstructCLI",
    "LibraryCLI",
    "PretrainCLI",
    "alignment_data",
    "alignment_model",
    "instruct_data",
    "instruct_model",
    "pretrain_data",
    "pretrain_model",
]


def alignment_data(
    data_dir: str | None = None,
    synthetic_subjects: int = 400,
    seed: int = 0,
    gene_components: int = 32,
    gene_top_genes: int = 2000,
    brain_atlas: str = "mni-gm-64",
    brain_components: int = 32,
    residualize: Sequence[str] = ("age", "sex", "site"),
    batch_size: int | None = None,
    stage: Stage = "contrastive",
) -> CohortDataModule:
    """The ``data:`` factory of ``nob align``: an encoded cohort, split by subject, as a data module.

    The cohort is encoded with :func:`default_cohort_encoder` fitted on its training fold.

    Parameters
    ----------
    data_dir
        A cohort folder (``Cohort.to_files`` layout); without it, a synthetic cohort of
        ``synthetic_subjects`` drawn with ``seed``.
    seed
        Also seeds the split and the batches.
    gene_components, gene_top_genes, brain_atlas, brain_components, residualize
        Passed to :func:`default_cohort_encoder`.
    batch_size
        Defaults to the ``stage``'s (:data:`training.args.ALIGNMENT`).
    """
    from neuroomics_bridge.data.cohort import Cohort
    from neuroomics_bridge.datasets import synthetic_cohort
    from neuroomics_bridge.encoders.cohort import default_cohort_encoder

    cohort = Cohort.from_files(data_dir) if data_dir else synthetic_cohort(synthetic_subjects, seed=seed)
    split = cohort.split(seed=seed)
    encoder = default_cohort_encoder(
        cohort,
        gene_components=gene_components,
        gene_top_genes=gene_top_genes,
        brain_atlas=brain_atlas,
        brain_components=brain_components,
        residualize=residualize,
    )
    cohort = encoder.fit_transform(cohort, split.train)
    size = stage_args(stage).batch_size if batch_size is None else batch_size
    return CohortDataModule(cohort, split=cohort.split(seed=seed), batch_size=size, seed=seed)


def alignment_model(
    backbone: BackboneConfig | None = None,
    bridge: BridgeConfig | None = None,
    stage: Stage = "contrastive",
    init_from: str | None = None,
    save_to: str = "nob-runs/bridge",
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup_fraction: float | None = None,
    seed: int = 0,
    modality_dims: dict[str, int] | None = None,
    lora: LoRAConfig | None = None,
    compile_training: bool = False,
) -> AlignmentModule:
    """The ``model:`` factory of ``nob align``: the alignment module of one stage.

    Parameters
    ----------
    backbone, bridge
        Configs of a new bridge (defaults: :class:`BackboneConfig`, :class:`BridgeConfig`).
    init_from
        A saved bridge to continue from instead (e.g. the contrastive stage's output for the
        prefix stage).
    save_to
        Where the trained bridge is saved when fitting ends.
    lr, weight_decay, warmup_fraction
        Unset: the stage's defaults.
    modality_dims
        Linked from the data; required without ``init_from``, and must match the saved bridge's
        with it.
    lora, compile_training
        Passed to :class:`AlignmentModule`.

    Raises
    ------
    DataError
        When ``modality_dims`` is missing without ``init_from`` or differs from the saved bridge's.
    """
    from neuroomics_bridge.bridge import Bridge

    backbone_model = TextBackbone.from_config(backbone or BackboneConfig())
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
        lora=lora,
        compile_training=compile_training,
    )


class LibraryCLI(LightningCLI):
    """LightningCLI with the library's trainer conventions.

    Subclasses name the two factories (``model_factory``, ``data_factory``), the default root
    directory (``run_name``) and the arguments linked from data to model (``parse_links`` when
    parsing, ``links`` at instantiation); ``trainer_extra`` adds trainer defaults.

    Parameters
    ----------
    args
        Command-line arguments (default: ``sys.argv``).
    run
        Run the subcommand (``fit`` ...) right away, as LightningCLI does.
    """

    model_factory: Any
    data_factory: Any
    run_name: str
    parse_links: tuple[tuple[str, str], ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    trainer_extra: ClassVar[dict[str, Any]] = {}

    def __init__(self, args: Sequence[str] | None = None, *, run: bool = True) -> None:
        super().__init__(
            type(self).model_factory,
            type(self).data_factory,
            args=list(args) if args is not None else None,
            run=run,
            trainer_defaults={
                "enable_progress_bar": sys.stderr.isatty(),
                "enable_model_summary": False,
                "log_every_n_steps": 1,
                **self.trainer_extra,
            },
            save_config_kwargs={"overwrite": True},
        )

    def default_root(self) -> Path:
        """Where checkpoints and logs go when the YAML sets no ``trainer.default_root_dir``."""
        return run_dir(self.run_name)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Link ``parse_links`` when parsing and ``links`` at instantiation."""
        for source, target in self.parse_links:
            parser.link_arguments(source, target, apply_on="parse")
        for source, target in self.links:
            parser.link_arguments(source, target, apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer with safetensors checkpoints (``last`` and best) and a CSV logger under the root directory.

        The root is the YAML's ``trainer.default_root_dir``, else :meth:`default_root`; the YAML's
        callbacks and plugins are kept, and its logger unless it is unset or ``true``. A fit that
        fails hands the backbone back as one that ends does (:class:`HandBackOnFailure`).
        """
        section = self.config_init.get(self.subcommand, self.config_init) if self.subcommand else self.config_init
        trainer = section.get("trainer") or {}
        root = Path(trainer.get("default_root_dir") or self.default_root())
        kwargs["default_root_dir"] = root
        kwargs["callbacks"] = [*(trainer.get("callbacks") or []), checkpoint_callback(root), HandBackOnFailure()]
        kwargs["plugins"] = [SafetensorsCheckpointIO(), *(trainer.get("plugins") or [])]
        if trainer.get("logger") in (None, True):
            kwargs["logger"] = CSVLogger(root, name="logs")
        return super().instantiate_trainer(**kwargs, **self.trainer_overrides(trainer))

    def trainer_overrides(self, trainer: dict[str, Any]) -> dict[str, Any]:
        """Trainer arguments a recipe sets where the YAML's ``trainer`` section leaves them unset:
        its length (:meth:`default_length`, where neither epochs nor steps are set) and its
        precision (:meth:`default_precision`)."""
        overrides: dict[str, Any] = {}
        if trainer.get("max_epochs") is None and trainer.get("max_steps") in (None, -1):
            overrides |= self.default_length()
        if trainer.get("precision") is None:
            overrides["precision"] = self.default_precision()
        return overrides

    def default_length(self) -> dict[str, int]:
        """``max_epochs`` or ``max_steps`` as the recipe's Python entry point defaults it."""
        return {}

    def default_precision(self) -> str:
        """The machine's precision (:func:`~neuroomics_bridge.training.trainer.mixed_precision`),
        since bf16 autocast on a CPU without native bf16 runs several times slower than float32."""
        return mixed_precision()


class AlignmentCLI(LibraryCLI):
    """``nob align fit``: the bridge's contrastive or prefix stage."""

    model_factory = staticmethod(alignment_model)
    data_factory = staticmethod(alignment_data)
    run_name = "align"
    parse_links = (("model.stage", "data.stage"),)  # the data's batch size default is the stage's
    links = (("data.modality_dims", "model.modality_dims"),)

    def default_root(self) -> Path:
        """A run folder per stage (``align-contrastive``, ``align-prefix``)."""
        return run_dir(f"{self.run_name}-{self.model.stage}")

    def default_length(self) -> dict[str, int]:
        """The stage's epochs (as :func:`fit_alignment`)."""
        return {"max_epochs": stage_args(self.model.stage).max_epochs}

    def default_precision(self) -> str:
        """The machine's mixed precision for a stage that trains in it, else float32."""
        return mixed_precision() if stage_args(self.model.stage).mixed_precision else "32-true"

    trainer_extra: ClassVar[dict[str, Any]] = {
        "use_distributed_sampler": False
    }  # CohortDataModule shards the folds itself


def pretrain_data(
    sources: dict[str, str],
    weights: dict[str, float],
    backbone: BackboneConfig | None = None,
    block_size: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    scrub: list[str] | None = None,
    heldout_fraction: float = 0.05,
    text_field: str = "text",
) -> PretrainDataModule:
    """The ``data:`` factory of ``nob pretrain``: named corpus paths mixed by token ``weights`` (e.g. 15:1:4).

    The backbone is loaded here (its tokenizer packs the blocks) and linked into the model; the
    other arguments are those of :class:`PretrainDataModule`.
    """
    return PretrainDataModule(
        TextBackbone.from_config(backbone or BackboneConfig()),
        sources,
        weights,
        block_size=block_size,
        batch_size=batch_size,
        seed=seed,
        scrub=scrub or (),
        heldout_fraction=heldout_fraction,
        text_field=text_field,
    )


def pretrain_model(
    backbone: Any = None,
    sources: list[str] | None = None,
    lr: float = PRETRAIN_OPTIMIZER.lr,
    weight_decay: float = PRETRAIN_OPTIMIZER.weight_decay,
    warmup_fraction: float = PRETRAIN_OPTIMIZER.warmup_fraction,
    gradient_checkpointing: bool = False,
    output_dir: str | None = "nob-runs/pretrained",
) -> ContinualPretrainModule:
    """The ``model:`` factory of ``nob pretrain``: continual pretraining of the data's backbone (linked).

    The trained model is saved to ``output_dir`` when fitting ends; the other arguments are those
    of :class:`ContinualPretrainModule`.
    """
    return ContinualPretrainModule(
        backbone,
        sources=sources or (),
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=warmup_fraction,
        gradient_checkpointing=gradient_checkpointing,
        output_dir=output_dir,
    )


class PretrainCLI(LibraryCLI):
    """``nob pretrain fit``: continual pretraining on a corpus mixture."""

    model_factory = staticmethod(pretrain_model)
    data_factory = staticmethod(pretrain_data)
    run_name = "pretrain"
    links = (("data.backbone", "model.backbone"), ("data.source_names", "model.sources"))
    trainer_extra: ClassVar[dict[str, Any]] = {"use_distributed_sampler": False, "check_val_every_n_epoch": None}

    def default_length(self) -> dict[str, int]:
        """:data:`~neuroomics_bridge.training.args.PRETRAIN_MAX_STEPS` (as :func:`continual_pretrain`)."""
        return {"max_steps": PRETRAIN_MAX_STEPS}

    def before_fit(self) -> None:
        """Measure held-out perplexity before training, as :func:`continual_pretrain` does: the
        model card's "before" (the first validation inside ``fit`` comes after a first step)."""
        self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)


def instruct_data(
    train_file: str,
    val_file: str | None = None,
    backbone: BackboneConfig | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    seed: int = 0,
    group_by_length: bool = False,
) -> InstructionDataModule:
    """The ``data:`` factory of ``nob instruct``: JSONL instruction records, tokenised for training.

    Records are formatted with the backbone's chat template; the backbone is loaded here and
    linked into the model. The training order is seeded by ``seed`` (and length-grouped
    with ``group_by_length``).
    """
    from neuroomics_bridge.data.instructions import read_instructions

    return InstructionDataModule(
        TextBackbone.from_config(backbone or BackboneConfig()),
        read_instructions(train_file),
        read_instructions(val_file) if val_file else (),
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        group_by_length=group_by_length,
    )


def instruct_model(
    backbone: Any = None,
    lora: LoRAConfig | None = None,
    lr: float = INSTRUCT_OPTIMIZER.lr,
    weight_decay: float = INSTRUCT_OPTIMIZER.weight_decay,
    warmup_fraction: float = INSTRUCT_OPTIMIZER.warmup_fraction,
    output_dir: str | None = "nob-runs/instruct-adapter",
    compile_training: bool = False,
) -> InstructionTuneModule:
    """The ``model:`` factory of ``nob instruct``: LoRA instruction tuning of the data's backbone (linked).

    The adapter alone is saved to ``output_dir`` when fitting ends; the other arguments are those
    of :class:`InstructionTuneModule`.
    """
    return InstructionTuneModule(
        backbone,
        lora,
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=warmup_fraction,
        output_dir=output_dir,
        compile_training=compile_training,
    )


class InstructCLI(LibraryCLI):
    """``nob instruct fit``: LoRA instruction tuning."""

    model_factory = staticmethod(instruct_model)
    data_factory = staticmethod(instruct_data)
    run_name = "instruct"
    links = (("data.backbone", "model.backbone"),)

    def default_length(self) -> dict[str, int]:
        """:data:`~neuroomics_bridge.training.args.INSTRUCT_EPOCHS` (as :func:`instruction_tune`)."""
        return {"max_epochs": INSTRUCT_EPOCHS}
