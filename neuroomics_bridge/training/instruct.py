"""Instruction tuning with LoRA (peft) on Lightning, Me-LLaMA's second stage.

Each record becomes ``chat_template(user turn of its task) + output + EOS``; the loss is on the
response tokens only. LoRA adapters (``LoRAConfig``) are the only trainable weights; the adapter is
saved alone (peft's ``adapter_model.safetensors``, no base weights) with a card naming its base,
and :func:`merge_lora` folds it into a plain model. :func:`evaluate_tasks` scores greedy answers
per task: accuracy for classification, NLI and QA, set F1 over lines for NER and relation
extraction, ROUGE-L for summaries and reports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, seed_everything
from torch.utils.data import DataLoader

from neuroomics_bridge.adapters.config import LoRAConfig
from neuroomics_bridge.backbone.packed import drop_packed_weights
from neuroomics_bridge.backbone.text import TextBackbone
from neuroomics_bridge.data.instructions import InstructionRecord, iter_tasks, user_turn
from neuroomics_bridge.errors import ConfigError, CorruptFileError, DataError, MissingFileError
from neuroomics_bridge.io import atomic_directory, check_replaceable, check_safetensors, damaged_safetensors
from neuroomics_bridge.training.args import INSTRUCT_EPOCHS, INSTRUCT_OPTIMIZER, OptimizerArgs
from neuroomics_bridge.training.data import SubjectSampler
from neuroomics_bridge.training.trainer import TrainableState, TrainingBackbone, build_trainer, mixed_precision

__all__ = [
    "InstructionTuneModule",
    "InstructionDataModule",
    "LoRAConfig",
    "evaluate_tasks",
    "instruction_tune",
    "load_lora",
    "merge_lora",
    "tokenize_record",
]

SAVED_ADAPTER = {"kind": "LoRA adapter", "marker": "adapter_config.json"}  # a saved adapter folder


def tokenize_record(backbone: TextBackbone, record: InstructionRecord, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels of one record, for a loss on the response only.

    The chat-formatted prompt is masked (-100), the response and EOS are scored. An overlong
    record keeps as much of the response as the whole prompt leaves room for, and at least half
    of ``max_length`` of it; the prompt loses its start.

    Returns
    -------
    dict
        ``input_ids`` and ``labels``, equally long, at most ``max_length``.

    Raises
    ------
    DataError
        For ``max_length < 2`` (no room for a prompt token and a scored one).
    """
    if max_length < 2:
        raise DataError(f"max_length: expected at least 2 tokens (a prompt token and a scored one), got {max_length}")
    prompt = backbone.tokenize([backbone.chat(user_turn(record))])[0]  # as generate() tokenizes prompts
    response = [*backbone.tokenize([record.output], special_tokens=False)[0], backbone.tokenizer.eos_token_id]
    if len(prompt) + len(response) > max_length:  # the response keeps what the prompt leaves, at least half
        response = response[: max(max_length // 2, max_length - len(prompt))]
    prompt = prompt[-(max_length - len(response)) :]
    return {"input_ids": prompt + response, "labels": [-100] * len(prompt) + response}


class InstructionDataModule(LightningDataModule):
    """Tokenised records (training and optional validation), padded on the right per batch.

    Parameters
    ----------
    backbone
        Formats and tokenises the records (:func:`tokenize_record`).
    train, val
        Training records (at least one) and validation records (none: no validation).
    batch_size, max_length
        Records per batch and most tokens per record.
    seed
        The training order of each epoch comes from ``(seed, epoch)``, so a resumed run replays it.
    group_by_length
        Batch training records of similar length (see
        :class:`~neuroomics_bridge.training.data.SubjectSampler`): a batch is padded to its
        longest record (22% of the shipped records' tokens are padding in plain batches, 4%
        grouped), though it runs packed, so only its attention computes on the padding. Off by
        default, as in Hugging Face's Trainer: batches of one length are often batches of one
        task, and its effect on what is learnt is not measured here.

    Raises
    ------
    DataError
        When ``train`` is empty.
    """

    def __init__(
        self,
        backbone: TextBackbone,
        train: Sequence[InstructionRecord],
        val: Sequence[InstructionRecord] = (),
        *,
        batch_size: int = 8,
        max_length: int = 512,
        seed: int = 0,
        group_by_length: bool = False,
    ) -> None:
        super().__init__()
        if not train:
            raise DataError("instruction tuning needs at least one training record")
        self.backbone = backbone
        self.pad_id = backbone.tokenizer.pad_token_id
        self.batch_size, self.seed, self.group_by_length = batch_size, seed, group_by_length
        self.train_items = [tokenize_record(backbone, r, max_length) for r in train]
        self.val_items = [tokenize_record(backbone, r, max_length) for r in val]

    def _loader(self, items: list[dict[str, list[int]]], shuffle: bool) -> DataLoader:
        lengths = [len(item["input_ids"]) for item in items] if shuffle and self.group_by_length else None
        sampler = SubjectSampler(
            len(items),
            seed=self.seed,
            shuffle=shuffle,
            lengths=None if lengths is None else lambda _epoch: lengths,
            batch_size=self.batch_size,
        )
        return DataLoader(items, batch_size=self.batch_size, sampler=sampler, collate_fn=self._collate)

    def train_dataloader(self) -> DataLoader:
        """The training records in a fresh seeded order each epoch (length-grouped with ``group_by_length``)."""
        return self._loader(self.train_items, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """The validation records in order, or no loader when there are none."""
        return self._loader(self.val_items, shuffle=False) if self.val_items else []

    def _collate(self, items: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(i["input_ids"]) for i in items)
        pad = [width - len(i["input_ids"]) for i in items]
        return {
            "input_ids": torch.tensor([i["input_ids"] + [self.pad_id] * p for i, p in zip(items, pad, strict=True)]),
            "attention_mask": torch.tensor(
                [[1] * len(i["input_ids"]) + [0] * p for i, p in zip(items, pad, strict=True)]
            ),
            "labels": torch.tensor([i["labels"] + [-100] * p for i, p in zip(items, pad, strict=True)]),
        }


class InstructionTuneModule(LightningModule):
    """The backbone wrapped by peft with LoRA adapters; only the adapters train.

    The base weights' dtype and ``requires_grad`` flags are restored when fitting ends.

    Parameters
    ----------
    backbone
        Its model receives the adapters (in place; cast to float32 unless QLoRA).
    lora
        The adapters' settings (default: :class:`LoRAConfig`).
    lr, weight_decay, betas, warmup_fraction
        AdamW with a cosine schedule warming up over this share of the steps.
    output_dir
        Where :func:`save_lora` writes the adapter at the end, if given.
    attention
        The backbone's attention implementation while training; ``"auto"``: the faster here
        (see :class:`~neuroomics_bridge.training.trainer.TrainingBackbone`).
    compile_training
        Run the training forwards through ``torch.compile`` (faster steps after a first one
        that compiles; see :meth:`~neuroomics_bridge.backbone.text.TextBackbone.compiled_training`).

    Raises
    ------
    ConfigError
        For ``qlora`` without bitsandbytes and a CUDA GPU, or with a backbone not loaded in 4 bits.
    """

    def __init__(
        self,
        backbone: TextBackbone,
        lora: LoRAConfig | None = None,
        *,
        lr: float = INSTRUCT_OPTIMIZER.lr,
        weight_decay: float = INSTRUCT_OPTIMIZER.weight_decay,
        betas: tuple[float, float] = INSTRUCT_OPTIMIZER.betas,
        warmup_fraction: float = INSTRUCT_OPTIMIZER.warmup_fraction,
        output_dir: str | os.PathLike[str] | None = None,
        attention: str = "auto",
        compile_training: bool = False,
    ) -> None:
        super().__init__()
        from peft import get_peft_model

        backbone.check_trainable("instruction tuning")
        self.lora = lora or LoRAConfig()
        self.lora.check_targets(backbone.model, backbone.name)
        if self.lora.qlora and not _qlora_available():
            raise ConfigError("lora.qlora=true needs bitsandbytes and a CUDA GPU; neither is here: set qlora: false")
        if self.lora.qlora and not getattr(backbone.model, "is_loaded_in_4bit", False):
            raise ConfigError(
                "lora.qlora=true needs a backbone loaded in 4 bits (transformers BitsAndBytesConfig); "
                f"{backbone.name} is loaded in {backbone.dtype}"
            )
        self.backbone = backbone
        self.base = {"base_model": backbone.name, "base_weights_sha256": backbone.weights_hash}
        # float32 LoRA master weights; the base weights' dtype and flags come back at teardown.
        self._callers_state = TrainableState.capture(backbone.model)
        base = backbone.model if self.lora.qlora else backbone.model.float()
        if self.lora.qlora:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base)
        self.model = get_peft_model(base, self.lora.to_peft())
        self.lr, self.weight_decay, self.betas, self.warmup_fraction = lr, weight_decay, tuple(betas), warmup_fraction
        if output_dir is not None:  # a folder it may not replace fails now, not after the whole fit
            check_replaceable(output_dir, **SAVED_ADAPTER)
        self.output_dir, self.attention, self.compile_training = output_dir, attention, compile_training

    def teardown(self, stage: str) -> None:
        """After fitting, give the base weights back their captured dtype and ``requires_grad`` flags."""
        if stage == "fit":
            self._callers_state.restore()

    def configure_callbacks(self) -> list[TrainingBackbone]:
        """Train through the backbone with the attention chosen for training."""
        return [TrainingBackbone(self.backbone, self.attention, compiled=self.compile_training)]

    def on_fit_end(self) -> None:
        """Say the weights changed (peft injected the adapters into ``backbone.model``); save the adapter if asked."""
        self.model.eval()
        self.backbone.mark_weights_changed()
        if self.output_dir is not None and self.trainer.is_global_zero:
            save_lora(self, self.output_dir)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the response tokens; the LM head runs at those positions only
        (the prompt's positions would cost a full vocabulary projection each and score nothing)."""
        hidden = self.backbone.last_hidden_state(  # the LoRA layers sit inside the backbone's model
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        targets = batch["labels"][:, 1:]
        scored = targets != -100
        logits = self.backbone.model.get_output_embeddings()(hidden[:, :-1][scored]).float()
        return torch.nn.functional.cross_entropy(logits, targets[scored])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on the response tokens, logged as ``train/loss``."""
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log the response-token cross-entropy as ``val/loss``."""
        self.log("val/loss", self._loss(batch), prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable (adapter) weights and a per-step cosine schedule with warmup."""
        from transformers import get_cosine_schedule_with_warmup

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(self.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Checkpoints hold the adapter weights only (the base is frozen and already on disk)."""
        from peft import get_peft_model_state_dict

        return {f"adapter.{k}": v for k, v in get_peft_model_state_dict(self.model).items()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load adapter weights saved by :meth:`state_dict` (``strict`` and ``assign`` are ignored)."""
        from peft import set_peft_model_state_dict

        adapter = {k.removeprefix("adapter."): v for k, v in state_dict.items()}
        return set_peft_model_state_dict(self.model, adapter)


def _qlora_available() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def instruction_tune(
    backbone: TextBackbone,
    records: Sequence[InstructionRecord],
    *,
    lora: LoRAConfig | None = None,
    val_records: Sequence[InstructionRecord] = (),
    max_epochs: int = INSTRUCT_EPOCHS,
    batch_size: int = 8,
    max_length: int = 512,
    group_by_length: bool = False,
    optimizer: OptimizerArgs = INSTRUCT_OPTIMIZER,
    seed: int = 0,
    root_dir: str | os.PathLike[str] = "nob-runs/instruct",
    output_dir: str | os.PathLike[str] | None = None,
    ckpt_path: str | None = None,
    attention: str = "auto",
    compile_training: bool = False,
    **trainer_kwargs: Any,
) -> InstructionTuneModule:
    """LoRA-tune ``backbone`` on ``records``.

    Parameters
    ----------
    backbone
        Receives the adapters in place.
    records, val_records
        Training and validation records; the best checkpoint is chosen on ``val/loss``, or on
        ``train/loss`` without validation records.
    lora
        The adapters' settings (default: :class:`LoRAConfig`).
    max_epochs, batch_size, max_length
        Epochs, records per batch and most tokens per record.
    group_by_length
        Batch records of similar length (less padding in attention); the order stays seeded by
        ``seed``.
    optimizer
        AdamW and its warm-up/cosine schedule; defaults to :data:`training.args.INSTRUCT_OPTIMIZER`.
    root_dir
        Checkpoints and logs (see :func:`build_trainer`).
    output_dir
        Gets the adapter only.
    ckpt_path
        Resume with ``"last"``.
    attention
        The backbone's attention implementation while training (``"auto"``: the faster here).
    compile_training
        Run the training forwards through ``torch.compile`` (see :class:`InstructionTuneModule`).
    **trainer_kwargs
        Passed to :func:`build_trainer` (precision defaults to :func:`mixed_precision`).

    Returns
    -------
    InstructionTuneModule
        Its ``model`` is the peft model (use it to generate, :func:`merge_lora` to fold it).
    """
    seed_everything(seed, workers=True)
    data = InstructionDataModule(
        backbone,
        records,
        val_records,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        group_by_length=group_by_length,
    )
    module = InstructionTuneModule(
        backbone,
        lora,
        lr=optimizer.lr,
        weight_decay=optimizer.weight_decay,
        betas=optimizer.betas,
        warmup_fraction=optimizer.warmup_fraction,
        output_dir=output_dir,
        attention=attention,
        compile_training=compile_training,
    )
    trainer_kwargs.setdefault("precision", mixed_precision())
    monitor = "val/loss" if val_records else "train/loss"
    trainer = build_trainer(root_dir, monitor=monitor, max_epochs=max_epochs, **trainer_kwargs)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def save_lora(module: InstructionTuneModule, directory: str | os.PathLike[str]) -> Path:
    """Write the adapter (peft format, safetensors, no base weights) and a card, atomically; returns ``directory``."""
    from neuroomics_bridge.notice import RESEARCH_NOTICE

    target = Path(directory)
    with atomic_directory(target, **SAVED_ADAPTER) as tmp:
        module.model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text(
            f"---\nbase_model: {module.base['base_model']}\nbase_weights_sha256: {module.base['base_weights_sha256']}\n"
            f"library_name: peft\n---\n\n# {target.name}\n\n**{RESEARCH_NOTICE}**\n\nLoRA adapter "
            f"(r={module.lora.r}, alpha={module.lora.alpha}) instruction-tuned with neuroomics-bridge.\n",
            encoding="utf-8",
        )
    return target


def load_lora(backbone: TextBackbone, directory: str | os.PathLike[str]) -> Any:
    """The backbone's model with a saved adapter applied (a peft model, eval mode).

    Raises
    ------
    MissingFileError
        When ``directory`` lacks ``adapter_config.json`` or ``adapter_model.safetensors`` (peft
        would also read a pickled ``adapter_model.bin``; this library reads safetensors only).
    CorruptFileError
        When either file is damaged, or the config is not a LoRA one.
    """
    from peft import PeftModel
    from safetensors import SafetensorError

    folder = Path(directory)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise MissingFileError(f"{folder}: no {name} (a peft LoRA folder saved as safetensors was expected)")
    config_file = folder / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{config_file}: not valid JSON ({err})") from None
    kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
    if kind != "LORA":
        raise CorruptFileError(f"{config_file}: expected a peft LoRA config (peft_type 'LORA'), got {kind!r}")
    check_safetensors(folder / "adapter_model.safetensors")
    try:
        return PeftModel.from_pretrained(backbone.model, str(folder)).eval()
    except SafetensorError as err:  # peft reads the file itself
        raise damaged_safetensors(folder / "adapter_model.safetensors", err) from None


def merge_lora(peft_model: Any) -> Any:
    """A plain transformers model with the adapter folded into its weights."""
    merged = peft_model.merge_and_unload()
    drop_packed_weights(merged)  # peft adds the update through ``weight.data``, which no version counter sees
    return merged


def evaluate_tasks(
    backbone: TextBackbone, records: Sequence[InstructionRecord], *, max_new_tokens: int = 32, batch_size: int = 8
) -> dict[str, float]:
    """Per-task scores of greedy answers against ``output`` (see the module docstring).

    Returns
    -------
    dict
        ``<task>/accuracy`` (normalised exact match) for classification, NLI and QA,
        ``<task>/f1`` (set F1 over lines) for NER and relation extraction, ``<task>/rouge_l``
        otherwise; only tasks present in ``records``.
    """
    from neuroomics_bridge.evaluation.metrics import normalize_answer, rouge_l, set_f1

    scores: dict[str, float] = {}
    for task, group in iter_tasks(list(records)):
        prompts = [backbone.chat(user_turn(r)) for r in group]
        answers = backbone.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        expected = [r.output for r in group]
        if task in ("classification", "nli", "qa"):
            scores[f"{task}/accuracy"] = sum(
                normalize_answer(a) == normalize_answer(e) for a, e in zip(answers, expected, strict=True)
            ) / len(group)
        elif task in ("ner", "relation_extraction"):
            scores[f"{task}/f1"] = sum(set_f1(a, e) for a, e in zip(answers, expected, strict=True)) / len(group)
        else:
            scores[f"{task}/rouge_l"] = rouge_l(answers, expected)
    return scores
