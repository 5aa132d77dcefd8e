"""Approximate faiss indexes for large cohorts and cell atlases: recall kept and speed gained.

200,000 unit vectors (64-d, drawn around 2,000 centres) and 1,000 held-out queries;
``EmbeddingIndex`` with ``IVF1024,Flat`` (nprobe 8, 64) and ``HNSW32`` (efSearch 32, 128) against
exact ``Flat`` search: recall@10 of the exact top-10, and query throughput as a ratio to
``Flat``. Build times are printed too.

``spread`` (first argument, default 0.05) is the per-dimension noise around the centres: at 0.05
the clusters are tight (the regime of aligned embeddings grouped by diagnosis or cell type); at
0.35 the vectors are nearly uniform on the sphere, the worst case for any approximate index.

Run: ``python benchmarks/bench_retrieval.py [spread]``. Prints one JSON line per setting.
"""

from __future__ import annotations

import functools

import numpy as np
from common import best_of, emit

from neuroomics_bridge.retrieval import EmbeddingIndex

N, DIM, CENTRES, QUERIES, K = 200_000, 64, 2_000, 1_000, 10


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float) -> np.ndarray:
    vectors = centres[rng.integers(len(centres), size=n)] + spread * rng.standard_normal((n, centres.shape[1]))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def main(spread: float) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM)) / np.sqrt(DIM)
    data, queries = clustered(rng, N, centres, spread), clustered(rng, QUERIES, centres, spread)
    ids = [str(i) for i in range(N)]
    exact_build, exact_index = best_of(lambda: EmbeddingIndex.build(data, ids), repeats=1, warm_up=False)
    exact_time, exact = best_of(lambda: exact_index.search(queries, K), repeats=1, warm_up=False)
    truth = [set(row) for row in exact.ids]
    settings = [("IVF1024,Flat", {"nprobe": 8}), ("IVF1024,Flat", {"nprobe": 64}),
                ("HNSW32", {"ef_search": 32}), ("HNSW32", {"ef_search": 128})]  # fmt: skip
    built: dict[str, tuple[float, EmbeddingIndex]] = {}
    for factory, params in settings:
        if factory not in built:
            build = functools.partial(EmbeddingIndex.build, data, ids, factory=factory, train_size=50_000)
            built[factory] = best_of(build, repeats=1, warm_up=False)
        build_seconds, index = built[factory]
        seconds, found = best_of(functools.partial(index.search, queries, K, **params), repeats=1, warm_up=False)
        recall = float(np.mean([len(truth[q] & set(row)) / K for q, row in enumerate(found.ids)]))
        emit(
            f"{factory} {params}", exact_time / seconds,
            **{"recall@10": round(recall, 4)}, query_s=round(seconds, 4), flat_query_s=round(exact_time, 4),
            build_s=round(build_seconds, 1), flat_build_s=round(exact_build, 2), spread=spread,
        )  # fmt: skip


if __name__ == "__main__":
    import sys

    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.05)
