"""Continual pretraining of a backbone on a domain mixture, Me-LLaMA's way, on Lightning.

Causal-LM loss on packed blocks drawn from a :class:`MixtureCorpus` (e.g. 15:1:4
biomedical:clinical:general by tokens); AdamW with betas 0.9/0.95 and a cosine schedule with 5%
warmup (Me-LLaMA's recipe); gradient accumulation, clipping, bf16 autocast and optional gradient
checkpointing through the Trainer; perplexity on held-out documents of every source after each
validation, so forgetting of general text shows; safetensors checkpoints and exact resume (the
stream skips the blocks already trained on); the result saved as a Hugging Face model directory
with a model card recording the mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, seed_everything
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from neuroomics_bridge.backbone.text import TextBackbone
from neuroomics_bridge.data.corpus import MixtureCorpus, PackedBlock, Source, checked_texts, pack, read_documents
from neuroomics_bridge.errors import ConfigError, DataError
from neuroomics_bridge.io import atomic_directory, check_replaceable
from neuroomics_bridge.notice import RESEARCH_NOTICE
from neuroomics_bridge.training.args import PRETRAIN_MAX_STEPS, PRETRAIN_OPTIMIZER, OptimizerArgs
from neuroomics_bridge.training.trainer import TrainableState, build_trainer, mixed_precision

__all__ = ["ContinualPretrainModule", "PretrainDataModule", "PretrainResult", "continual_pretrain", "is_heldout"]

SAVED_MODEL = {"kind": "model", "marker": "config.json"}  # what a saved model folder is, to replace it


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split (a stable hash of its text).

    Parameters
    ----------
    text
        The document.
    fraction
        The share of documents held out, in expectation.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _documents(source: Source, text_field: str) -> Iterator[str]:
    return read_documents(source, text_field=text_field) if isinstance(source, str | Path) else checked_texts(source)


class _TrainingDocuments:
    """A source without its held-out documents (what the mixture draws training text from)."""

    def __init__(self, source: Source, fraction: float, text_field: str) -> None:
        self.source, self.fraction, self.text_field = source, fraction, text_field

    def __iter__(self) -> Iterator[str]:
        return (t for t in _documents(self.source, self.text_field) if not is_heldout(t, self.fraction))


class PackedBlocks(IterableDataset):
    """Packed training blocks streamed from the mixture, sharded across ranks.

    Each rank takes every ``world``-th block, after skipping the first ``skip`` blocks (those
    already trained on, when resuming); the data module sets ``skip``, ``rank`` and ``world``.
    Iterating yields ``{"input_ids", "position_ids"}`` tensors and raises :class:`DataError`
    under more than one DataLoader worker.

    Parameters
    ----------
    corpus
        The mixture the documents come from.
    backbone
        Its tokenizer tokenises the documents (no special tokens; EOS separates them).
    block_size
        Tokens per block.
    """

    def __init__(self, corpus: MixtureCorpus, backbone: TextBackbone, block_size: int) -> None:
        self.corpus, self.backbone, self.block_size = corpus, backbone, block_size
        self.skip, self.rank, self.world = 0, 0, 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None and get_worker_info().num_workers > 1:
            raise DataError("PackedBlocks streams one mixture: use num_workers=0 or 1")
        tokenizer = self.backbone.tokenizer
        stream = (
            ids for _, ids in self.corpus.token_stream(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])
        )
        for index, block in enumerate(pack(stream, self.block_size, tokenizer.eos_token_id)):
            if index >= self.skip and index % self.world == self.rank:
                yield _tensors(block)


def _tensors(block: PackedBlock) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor(block.input_ids), "position_ids": torch.tensor(block.position_ids)}


class PretrainDataModule(LightningDataModule):
    """Packed training blocks from the mixture; held-out blocks per source for validation.

    Parameters
    ----------
    backbone
        Its tokenizer tokenises every document.
    sources, weights, seed, scrub, text_field
        As in :class:`MixtureCorpus`; training draws skip the held-out documents.
    block_size, batch_size
        Tokens per block and blocks per batch.
    heldout_fraction
        The share of each source's documents held out (by :func:`is_heldout`), in ``(0, 1)``.
    max_heldout_blocks
        Most validation blocks per source.

    Raises
    ------
    DataError
        When ``heldout_fraction`` is outside ``(0, 1)``, or as :class:`MixtureCorpus` raises.
    """

    def __init__(
        self,
        backbone: TextBackbone,
        sources: Mapping[str, Source],
        weights: Mapping[str, float],
        *,
        block_size: int = 512,
        batch_size: int = 8,
        seed: int = 0,
        scrub: Collection[str] = (),
        heldout_fraction: float = 0.05,
        max_heldout_blocks: int = 16,
        text_field: str = "text",
    ) -> None:
        super().__init__()
        if not 0 < heldout_fraction < 1:
            raise DataError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        if max_heldout_blocks < 1:  # the cap is checked after each block: 0 would mean no cap at all
            raise DataError(f"max_heldout_blocks: expected at least 1 block per source, got {max_heldout_blocks}")
        self.backbone, self.sources, self.block_size, self.batch_size = backbone, dict(sources), block_size, batch_size
        self.heldout_fraction, self.max_heldout_blocks, self.text_field = (
            heldout_fraction,
            max_heldout_blocks,
            text_field,
        )
        training = {name: _TrainingDocuments(s, heldout_fraction, text_field) for name, s in sources.items()}
        self.corpus = MixtureCorpus(training, weights, seed=seed, scrub=scrub, text_field=text_field)
        self.scrub = set(scrub)
        self.train_blocks = PackedBlocks(self.corpus, backbone, block_size)
        self._heldout: dict[str, list[PackedBlock]] | None = None

    @property
    def source_names(self) -> list[str]:
        """The sources, in the order of the validation dataloaders."""
        return list(self.sources)

    def mixture_summary(self) -> dict[str, Any]:
        """The mixture's target weights and what was drawn (documents, tokens, shares, PHI)."""
        return {"weights": dict(self.corpus.weights), **self.corpus.stats.to_dict()}

    def heldout_blocks(self) -> dict[str, list[PackedBlock]]:
        """Each source's held-out documents, scrubbed like its training text, packed (computed once).

        Raises
        ------
        DataError
            When a source has no held-out document.
        """
        from neuroomics_bridge.data.phi import scrub_phi

        if self._heldout is None:
            tokenizer = self.backbone.tokenizer
            self._heldout = {}
            for name, source in self.sources.items():
                texts = (t for t in _documents(source, self.text_field) if is_heldout(t, self.heldout_fraction))
                texts = (scrub_phi(t).text if name in self.scrub else t for t in texts)
                ids = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
                blocks = []
                for block in pack(ids, self.block_size, tokenizer.eos_token_id):
                    blocks.append(block)
                    if len(blocks) == self.max_heldout_blocks:
                        break
                if not blocks:
                    raise DataError(
                        f"source {name!r}: no held-out documents at heldout_fraction={self.heldout_fraction}; "
                        "raise it or add documents"
                    )
                self._heldout[name] = blocks
        return self._heldout

    def train_dataloader(self) -> DataLoader:
        """The training stream, sharded per rank and skipping the blocks of steps already taken."""
        trainer = self.trainer
        if trainer is not None:  # resume where the checkpoint left off, one shard per rank
            self.train_blocks.rank, self.train_blocks.world = trainer.global_rank, trainer.world_size
            per_step = self.batch_size * trainer.accumulate_grad_batches * trainer.world_size
            self.train_blocks.skip = trainer.global_step * per_step
        return DataLoader(self.train_blocks, batch_size=self.batch_size, collate_fn=_collate)

    def val_dataloader(self) -> list[DataLoader]:
        """One dataloader of held-out blocks per source, in :attr:`source_names` order."""
        return [
            DataLoader([_tensors(b) for b in blocks], batch_size=self.batch_size, collate_fn=_collate)
            for blocks in self.heldout_blocks().values()
        ]


def _collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack blocks; a short (last) block is padded as its own sequence whose labels are ignored."""
    width = max(len(item["input_ids"]) for item in items)
    ids, positions, labels = [], [], []
    for item in items:
        pad = width - len(item["input_ids"])
        ids.append(torch.nn.functional.pad(item["input_ids"], (0, pad)))
        positions.append(torch.cat([item["position_ids"], torch.arange(pad)]))
        labels.append(torch.nn.functional.pad(item["input_ids"], (0, pad), value=-100))
    return {"input_ids": torch.stack(ids), "position_ids": torch.stack(positions), "labels": torch.stack(labels)}


class ContinualPretrainModule(LightningModule):
    """Causal-LM training of every backbone weight (kept in float32; autocast does bf16).

    The backbone's dtype and ``requires_grad`` flags are restored when fitting ends.

    Parameters
    ----------
    backbone
        Trained in place.
    sources
        Names of the validation dataloaders, for the ``val/ppl_<source>`` metrics.
    lr, weight_decay, betas, warmup_fraction
        AdamW (no decay on biases and norms) with a cosine schedule warming up over this share of
        ``max_steps``.
    gradient_checkpointing
        Trade compute for activation memory.
    output_dir
        Where :func:`save_pretrained_backbone` writes the trained model at the end, if given.
    """

    def __init__(
        self,
        backbone: TextBackbone,
        *,
        sources: Sequence[str] = (),
        lr: float = PRETRAIN_OPTIMIZER.lr,
        weight_decay: float = PRETRAIN_OPTIMIZER.weight_decay,
        betas: tuple[float, float] = PRETRAIN_OPTIMIZER.betas,
        warmup_fraction: float = PRETRAIN_OPTIMIZER.warmup_fraction,
        gradient_checkpointing: bool = False,
        output_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        backbone.check_trainable("continual pretraining")
        self.backbone = backbone
        self.base = {"base_model": backbone.name, "base_weights_sha256": backbone.weights_hash}
        if output_dir is not None:  # a folder it may not replace fails now, not after the whole fit
            check_replaceable(output_dir, **SAVED_MODEL)
        self.output_dir = output_dir
        # Master weights in float32 (mixed precision comes from the Trainer); the caller's dtype and
        # requires_grad flags come back when fitting ends (teardown).
        self._callers_state = TrainableState.capture(backbone.model)
        self.model = backbone.model.float()
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.sources = list(sources)
        self.lr, self.weight_decay, self.betas, self.warmup_fraction = lr, weight_decay, tuple(betas), warmup_fraction
        self.perplexity: dict[str, float] = {}
        self.perplexity_before: dict[str, float] = {}
        self._sums: dict[int, list[float]] = {}

    def _nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token NLL over real tokens and their count. No attention mask: the
        restarting position ids make transformers mask across packed documents."""
        logits = self.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        targets = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
        )
        return nll, (targets != -100).sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mean next-token NLL of the batch's real tokens, logged as ``train/loss``."""
        nll, count = self._nll(batch)
        loss = nll / count.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        """Reset the per-source NLL sums."""
        self._sums = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Add the batch's summed NLL and token count to its source's sums."""
        nll, count = self._nll(batch)
        sums = self._sums.setdefault(dataloader_idx, [0.0, 0.0])
        sums[0] += float(nll)
        sums[1] += float(count)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the last optimizer step, ask to stop: Lightning then validates once more, so the
        "after" perplexity is the trained model's whatever ``val_check_interval`` is."""
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True

    def on_validation_epoch_end(self) -> None:
        """Log perplexity per source and pooled ``val/loss``; the first real validation is the "before".

        Lightning's sanity check (two batches before the first step) is not a measurement: it is
        logged by Lightning only, and leaves the recorded perplexities alone."""
        if self.trainer.sanity_checking:
            return
        total = [0.0, 0.0]
        for index, (nll, count) in sorted(self._sums.items()):
            name = self.sources[index] if index < len(self.sources) else str(index)
            self.perplexity[name] = math.exp(nll / max(count, 1))
            self.log(f"val/ppl_{name}", self.perplexity[name])
            total = [total[0] + nll, total[1] + count]
        self.log("val/loss", total[0] / max(total[1], 1), prog_bar=True)
        if self.global_step == 0 and not self.perplexity_before:
            self.perplexity_before = dict(self.perplexity)

    def teardown(self, stage: str) -> None:
        """After fitting, give the backbone back its captured dtype and ``requires_grad`` flags."""
        if stage == "fit":
            self._callers_state.restore()

    def on_fit_end(self) -> None:
        """The weights changed in place: say so, and save the model with its card if asked."""
        self.model.eval()
        self.backbone.mark_weights_changed()
        if self.output_dir is not None and self.trainer.is_global_zero:
            save_pretrained_backbone(self.backbone, self.output_dir, self.card())

    def card(self) -> dict[str, Any]:
        """Model-card facts: base model, the mixture's accounting, held-out perplexity."""
        data = self.trainer.datamodule if self._trainer is not None else None
        mixture = data.mixture_summary() if isinstance(data, PretrainDataModule) else {}
        return {
            **self.base,
            "training": "continual pretraining (causal LM) with neuroomics-bridge",
            "mixture": mixture,
            "heldout_perplexity": {"before": self.perplexity_before, "after": self.perplexity},
        }

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (decay on matrices only) and a per-step cosine schedule with warmup over ``max_steps``."""
        from transformers import get_cosine_schedule_with_warmup

        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)
        if self.trainer.max_steps <= 0:  # the training data is a stream: only steps end it
            raise ConfigError(f"continual pretraining: expected trainer max_steps > 0, got {self.trainer.max_steps}")
        total = int(self.trainer.max_steps)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(self.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclasses.dataclass
class PretrainResult:
    """What :func:`continual_pretrain` did: outputs, perplexity before and after, the mixture.

    Attributes
    ----------
    output_dir
        The saved model directory (``None`` when none was asked for, or off rank 0).
    root_dir
        Checkpoints and logs.
    perplexity_before, perplexity_after
        Held-out perplexity per source.
    mixture
        The mixture's accounting (weights; documents, tokens and token shares per source; PHI
        counts).
    """

    output_dir: Path | None
    root_dir: Path
    perplexity_before: dict[str, float]
    perplexity_after: dict[str, float]
    mixture: dict[str, Any]


def continual_pretrain(
    backbone: TextBackbone,
    corpora: Mapping[str, Source],
    weights: Mapping[str, float],
    *,
    max_steps: int = PRETRAIN_MAX_STEPS,
    block_size: int = 512,
    batch_size: int = 8,
    accumulate_grad_batches: int = 1,
    optimizer: OptimizerArgs = PRETRAIN_OPTIMIZER,
    gradient_clip_val: float = 1.0,
    gradient_checkpointing: bool = False,
    scrub: Collection[str] = (),
    heldout_fraction: float = 0.05,
    max_heldout_blocks: int = 16,
    text_field: str = "text",
    val_check_interval: int | None = None,
    seed: int = 0,
    root_dir: str | os.PathLike[str] = "nob-runs/pretrain",
    output_dir: str | os.PathLike[str] | None = None,
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
) -> PretrainResult:
    """Continue pretraining ``backbone`` on ``corpora`` mixed by ``weights`` (by tokens).

    Trains ``max_steps`` optimizer steps of ``batch_size * accumulate_grad_batches`` blocks of
    ``block_size`` tokens; held-out perplexity per source is measured before and after.

    Parameters
    ----------
    backbone
        Trained in place (every weight).
    corpora, weights
        Source names -> paths or document lists, and their token weights (see
        :class:`MixtureCorpus`).
    optimizer
        AdamW and its warm-up/cosine schedule; defaults to :data:`training.args.PRETRAIN_OPTIMIZER`.
    scrub
        Sources PHI-scrubbed first.
    heldout_fraction, max_heldout_blocks, text_field
        As in :class:`PretrainDataModule`.
    val_check_interval
        Batches between validations (default: only at the end).
    root_dir
        Checkpoints and logs (see :func:`build_trainer`).
    output_dir
        Receives the model (``save_pretrained``), tokenizer and a model card.
    ckpt_path
        Resume with ``"last"``.
    **trainer_kwargs
        Passed to :func:`build_trainer` (precision defaults to :func:`mixed_precision`).

    Returns
    -------
    PretrainResult
        Outputs, perplexity before and after, and the mixture's accounting.
    """
    seed_everything(seed, workers=True)
    data = PretrainDataModule(
        backbone,
        corpora,
        weights,
        block_size=block_size,
        batch_size=batch_size,
        seed=seed,
        scrub=scrub,
        heldout_fraction=heldout_fraction,
        max_heldout_blocks=max_heldout_blocks,
        text_field=text_field,
    )
    module = ContinualPretrainModule(
        backbone,
        sources=data.source_names,
        lr=optimizer.lr,
        weight_decay=optimizer.weight_decay,
        betas=optimizer.betas,
        warmup_fraction=optimizer.warmup_fraction,
        gradient_checkpointing=gradient_checkpointing,
        output_dir=output_dir,
    )
    trainer_kwargs.setdefault("precision", mixed_precision())
    trainer = build_trainer(
        root_dir,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate_grad_batches,
        gradient_clip_val=gradient_clip_val,
        val_check_interval=val_check_interval or max_steps * accumulate_grad_batches,
        check_val_every_n_epoch=None,
        use_distributed_sampler=False,
        **trainer_kwargs,
    )
    trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    saved = Path(output_dir) if output_dir is not None and trainer.is_global_zero else None
    return PretrainResult(
        saved, Path(root_dir), module.perplexity_before, dict(module.perplexity), data.mixture_summary()
    )


def save_pretrained_backbone(
    backbone: TextBackbone, directory: str | os.PathLike[str], card: Mapping[str, Any]
) -> Path:
    """Write a trained backbone as a Hugging Face directory with a model card, atomically.

    Safetensors weights, the tokenizer and a ``README.md`` whose YAML header is ``card``. It
    reloads with ``TextBackbone.from_pretrained(directory)``.

    Returns
    -------
    Path
        ``directory``.
    """
    import yaml

    target = Path(directory)
    header = yaml.safe_dump(json.loads(json.dumps(dict(card))), sort_keys=False, allow_unicode=True)
    with atomic_directory(target, **SAVED_MODEL) as tmp:
        backbone.model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
        summary = f"{card.get('training', 'Trained')} from `{card.get('base_model')}`."
        body = f"# {target.name}\n\n**{RESEARCH_NOTICE}**\n\n{summary}\n"
        (tmp / "README.md").write_text(f"---\n{header}---\n\n{body}", encoding="utf-8")
    return target
