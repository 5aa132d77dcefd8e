"""Continual-pretraining throughput, each figure a ratio against a baseline run here and now.

1. Packed blocks (512 tokens, position ids restarting per document) vs padded batches of whole
   documents, the same training step (bf16 autocast where native, AdamW): real (non-pad) tokens
   per second on the variable-length sample corpus (goal >= 1.5x).
2. ``continual_pretrain`` (Lightning, packed, mixed precision) vs a plain ``transformers``
   ``Trainer`` with its defaults (padding collator, float32 on the CPU) on the same model and
   documents: real tokens per second over the timed steps (goal >= 1x).

Run: ``python benchmarks/bench_pretrain.py``. Prints one JSON line per figure.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import emit

SAMPLES = Path(__file__).parents[1] / "examples" / "data" / "corpora"
STEPS = 6  # timed steps per arm, after one warm-up step
BLOCK = 512


def documents(tokenizer) -> list[list[int]]:
    """Token ids of the sample corpus's documents, shuffled (seeded), capped at one block."""
    from neuroomics_bridge.data.corpus import read_documents

    texts = [
        t for source in ("biomedical.jsonl", "clinical", "general.parquet") for t in read_documents(SAMPLES / source)
    ]
    ids = [[*tokenizer(t, add_special_tokens=False)["input_ids"][: BLOCK - 1], tokenizer.eos_token_id] for t in texts]
    order = np.random.default_rng(0).permutation(len(ids))
    return [ids[i] for i in order]


def padded_batches(docs: list[list[int]], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    batches = []
    for start in range(0, len(docs), batch_size):
        group = docs[start : start + batch_size]
        width = max(map(len, group))
        ids = torch.tensor([d + [pad_id] * (width - len(d)) for d in group])
        mask = torch.tensor([[1] * len(d) + [0] * (width - len(d)) for d in group])
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return batches


def packed_batches(docs: list[list[int]], batch_size: int) -> list[dict[str, torch.Tensor]]:
    from neuroomics_bridge.data.corpus import pack

    blocks = [b for b in pack((d[:-1] for d in docs), BLOCK, docs[0][-1]) if len(b.input_ids) == BLOCK]
    return [
        {
            "input_ids": torch.tensor([b.input_ids for b in blocks[i : i + batch_size]]),
            "position_ids": torch.tensor([b.position_ids for b in blocks[i : i + batch_size]]),
        }
        for i in range(0, len(blocks) - batch_size + 1, batch_size)
    ]


def tokens_per_second(model, batches, dtype) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))
    tokens, elapsed = 0, 0.0
    for step, batch in enumerate(batches[: STEPS + 1]):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            labels = batch.get("labels", batch["input_ids"])
            loss = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step warms up kernels and allocator
            elapsed += time.perf_counter() - start
            tokens += int((labels != -100).sum())
    return tokens / elapsed


def bench_packing(dtype) -> None:
    from neuroomics_bridge import TextBackbone

    backbone = TextBackbone.from_pretrained("smollm2-135m-instruct", dtype="float32")
    docs = documents(backbone.tokenizer)
    lengths = np.array(list(map(len, docs)))
    initial = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    padded = tokens_per_second(backbone.model, padded_batches(docs, 8, backbone.tokenizer.pad_token_id), dtype)
    backbone.model.load_state_dict(initial)
    packed = tokens_per_second(backbone.model, packed_batches(docs, 4), dtype)
    emit(
        "packed_vs_padded_tokens_per_s",
        packed / padded,
        packed_tok_s=round(packed, 1),
        padded_tok_s=round(padded, 1),
        doc_tokens_median=int(np.median(lengths)),
        doc_tokens_max=int(lengths.max()),
        dtype=str(dtype),
    )


def bench_against_hf_trainer() -> None:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from neuroomics_bridge import TextBackbone
    from neuroomics_bridge.training.pretrain import continual_pretrain

    class InOrderTrainer(Trainer):
        """The stock Trainer, reading documents in order so the timed batches are known."""

        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.times.append(time.perf_counter() - self.start)

    backbone = TextBackbone.from_pretrained("smollm2-135m-instruct", dtype="float32")
    docs = documents(backbone.tokenizer)
    collator = DataCollatorForLanguageModeling(backbone.tokenizer, mlm=False)
    clock, batch_size = Clock(), 8
    with tempfile.TemporaryDirectory() as tmp:
        arguments = TrainingArguments(
            tmp, per_device_train_batch_size=batch_size, max_steps=STEPS + 1, report_to=[], save_strategy="no",
            disable_tqdm=True, dataloader_drop_last=True, use_cpu=True, seed=0,
        )  # fmt: skip
        trainer = InOrderTrainer(
            backbone.model,
            arguments,
            train_dataset=[{"input_ids": d} for d in docs],
            data_collator=collator,
            callbacks=[clock],
        )
        batches = list(trainer.get_train_dataloader())[: STEPS + 1]  # the batches train() will see
        trainer.train()
    # Real (non-pad) input tokens: the collator also masks every EOS out of the labels (its pad id).
    hf_tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    hf = hf_tokens / sum(clock.times[1:])

    backbone = TextBackbone.from_pretrained("smollm2-135m-instruct", dtype="float32")
    sources = {name: SAMPLES / name for name in ("biomedical.jsonl", "clinical", "general.parquet")}
    weights = dict.fromkeys(sources, 1.0)
    from lightning.pytorch import Callback

    class LightningClock(Callback):
        """Times each step from its batch's start to its end, as ``Clock`` times the Trainer's:
        fetching, logging, validation and the final checkpoint fall outside on both sides."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self.start)

    lightning_clock = LightningClock()
    with tempfile.TemporaryDirectory() as tmp:
        result = continual_pretrain(
            backbone, sources, weights, max_steps=STEPS + 1, block_size=BLOCK, batch_size=4, root_dir=tmp,
            enable_progress_bar=False, callbacks=[lightning_clock],
        )  # fmt: skip
    ours = STEPS * 4 * BLOCK / sum(lightning_clock.times[1:])  # packed blocks: every token is real
    emit(
        "continual_pretrain_vs_hf_trainer_tokens_per_s",
        ours / hf,
        ours_tok_s=round(ours, 1),
        hf_trainer_tok_s=round(hf, 1),
        heldout_ppl_general=round(result.perplexity_after.get("general.parquet", float("nan")), 2),
    )


def main() -> None:
    from neuroomics_bridge.backbone.hardware import cpu_has_native_bf16

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    bench_packing(dtype)
    bench_against_hf_trainer()


if __name__ == "__main__":
    main()
