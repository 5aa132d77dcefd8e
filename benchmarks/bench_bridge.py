"""Bridge training and retrieval speed, each figure a ratio against a baseline run here and now.

1. Contrastive epoch with the on-disk text cache vs re-encoding every report with the backbone
   at every step (goal >= 20x).
2. faiss ``EmbeddingIndex`` (Flat, cosine) vs numpy brute force over 100,000 vectors, same
   top-10 (checked) (goal: faster).
3. Prefix-stage training tokens/s with a bf16 backbone and bf16 autocast vs float32.

Run: ``python benchmarks/bench_bridge.py``. Prints one JSON line per figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from common import best_seconds, emit


def encoded_cohort(n_subjects: int):
    from neuroomics_bridge import BrainEncoder, GeneEncoder, datasets

    cohort = datasets.synthetic_cohort(n_subjects, seed=0)
    encoders = {"gene": GeneEncoder(n_components=32), "brain": BrainEncoder("mni-gm-64", n_components=32)}
    cohort = cohort.encode(encoders, fit_on=cohort.split(seed=0).train)
    return cohort, cohort.split(seed=0)


def bench_text_cache(backbone) -> None:
    from neuroomics_bridge.bridge import Bridge
    from neuroomics_bridge.training.alignment import CohortDataModule

    cohort, split = encoded_cohort(200)
    bridge = Bridge(backbone, {"gene": 32, "brain": 32})
    batches = list(CohortDataModule(cohort, split=split, batch_size=32).train_dataloader())
    optimizer = torch.optim.AdamW(bridge.adapters.parameters(), lr=1e-3)

    def epoch(encode: Callable[[list[str]], torch.Tensor]) -> None:
        for batch in batches:
            text = encode(list(batch["text"]))
            loss = bridge.adapters.contrastive(batch["features"], batch["present"], text).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def re_encoding(texts: list[str]) -> torch.Tensor:
        wrapped = [bridge.config.text_template.format(text=t) for t in texts]
        return backbone.encode(wrapped, pooling=bridge.config.text_pooling, show_progress=False)

    bridge.text_encoder.encode(split.train.reports)  # fill the cache once, as training does up front
    cached_s = best_seconds(lambda: epoch(bridge.text_encoder.encode), repeats=2)  # both sides: best of 2
    uncached_s = best_seconds(lambda: epoch(re_encoding), repeats=2)
    emit(
        "contrastive_epoch_text_cache_vs_reencoding",
        uncached_s / cached_s,
        cached_s=round(cached_s, 3),
        reencoding_s=round(uncached_s, 2),
        subjects=split.train.n_subjects,
    )


def bench_faiss() -> None:
    from neuroomics_bridge.retrieval import EmbeddingIndex

    rng = np.random.default_rng(0)
    keys = rng.normal(size=(100_000, 256)).astype(np.float32)
    queries = rng.normal(size=(256, 256)).astype(np.float32)
    index = EmbeddingIndex.build(keys)
    unit_keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)

    def brute() -> np.ndarray:
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit_keys.T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)

    same = [list(map(int, row)) for row in index.search(queries, 10).ids] == brute().tolist()
    faiss_s, numpy_s = best_seconds(lambda: index.search(queries, 10)), best_seconds(brute)
    emit(
        "faiss_flat_search_vs_numpy_brute_force",
        numpy_s / faiss_s,
        vectors=len(keys),
        queries=len(queries),
        same_top10=same,
        faiss_s=round(faiss_s, 4),
        numpy_s=round(numpy_s, 4),
    )


def bench_prefix_precision() -> None:
    from neuroomics_bridge import TextBackbone
    from neuroomics_bridge.bridge import Bridge

    cohort, _ = encoded_cohort(40)
    features = {m: torch.from_numpy(np.nan_to_num(x[:8])) for m, x in cohort.features.items()}
    present = {m: torch.from_numpy(cohort.present(m)[:8]) for m in cohort.features}
    reports = cohort.reports[:8]
    rates = {}
    for label, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        backbone = TextBackbone.from_pretrained("smollm2-135m-instruct", dtype=dtype)
        backbone.model.requires_grad_(False)
        bridge = Bridge(backbone, {m: x.shape[1] for m, x in features.items()})

        def step(bridge=bridge, dtype=dtype) -> int:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                nll, tokens = bridge.report_nll(features, present, reports)
            (nll.sum() / tokens.sum()).backward()
            return int(tokens.sum())

        tokens = step()
        rates[label] = tokens / best_seconds(step, repeats=2)
    emit(
        "prefix_training_tokens_per_s_bf16_vs_fp32",
        rates["bf16"] / rates["fp32"],
        bf16_tokens_per_s=round(rates["bf16"], 1),
        fp32_tokens_per_s=round(rates["fp32"], 1),
    )


def main() -> None:
    from neuroomics_bridge import TextBackbone

    warnings.filterwarnings("ignore")
    bench_text_cache(TextBackbone.from_pretrained("smollm2-135m-instruct"))
    bench_faiss()
    bench_prefix_precision()


if __name__ == "__main__":
    main()
