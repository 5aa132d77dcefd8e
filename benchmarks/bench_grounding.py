"""Are reports about their subject? Every grounding figure beside its baseline, over several seeds.

1. Synthetic cohort (the full ``nob demo``, one run per seed): per fact category, the share of
   held-out subjects whose report states the fact correctly, for the prefix-only report (the
   grounding test) against its shuffled-subject control and chance, for the full report against
   the retrieval-copy baseline (the nearest reference subject's report) and its shuffled control;
   report perplexity with the own vs a shuffled subject's prefix; the share of sentences copied
   verbatim from retrieved neighbours, beside the same share for the subject's own reference
   report (what shared phrasing alone gives); and the demo's wall time.
2. Real cells (scanpy's ``pbmc68k_reduced``): the prefix stage trained on cells paired with
   their cell type's description, a description generated from each held-out cell's prefix alone;
   the cell type it names against kNN on the PCA features of the same split, and the shuffled
   control.

Run: ``python benchmarks/bench_grounding.py [--seeds 0 1 2] [--skip-demo] [--skip-cells]
[--compile-training]``. Prints one JSON line per figure and seed, then the mean over seeds;
``ratio`` compares the figure with its baseline in the same run (a difference where a ratio of
shares would mislead is given as ``margin``).
Freed memory is kept mapped as ``nob`` keeps it (:func:`~neuroomics_bridge.allocator.keep_freed_memory`),
so ``demo_seconds`` is the time ``nob demo`` takes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import emit

from neuroomics_bridge.allocator import keep_freed_memory
from neuroomics_bridge.backbone.calibration import cpu_model

CATEGORIES = ("diagnosis", "severity", "sex", "age", "gene_findings", "brain_findings")


def demo_figures(seed: int, folder: Path, compile_training: bool) -> dict[str, float]:
    from neuroomics_bridge.demo import FULL, run_demo

    started = time.perf_counter()
    result = run_demo(
        folder / f"demo-{seed}", settings=FULL, seed=seed, compile_training=compile_training, log=lambda _: None
    )
    m = result.metrics
    figures = {"demo_seconds": time.perf_counter() - started}
    for category in CATEGORIES:
        for variant in (
            "prefix_only",
            "prefix_only/shuffled",
            "full",
            "full/shuffled",
            "evidence_only",
            "retrieval_copy",
        ):
            key = f"report/{variant}/{category}"
            if key in m:
                figures[f"{variant}/{category}"] = m[key]
        if f"report/chance/{category}" in m:
            figures[f"chance/{category}"] = m[f"report/chance/{category}"]
    for variant in ("full", "prefix_only", "evidence_only", "retrieval_copy"):
        if f"report/{variant}/rouge_l" in m:
            figures[f"{variant}/rouge_l"] = m[f"report/{variant}/rouge_l"]
    for variant in ("full", "prefix_only", "evidence_only", "reference"):
        figures[f"{variant}/copied"] = m[f"report/{variant}/copied"]
    figures["perplexity_own"] = m["prefix/perplexity_matched"]
    figures["perplexity_shuffled"] = m["prefix/perplexity_shuffled"]
    figures["perplexity_reduction"] = 1 - m["prefix/perplexity_matched"] / m["prefix/perplexity_shuffled"]
    return figures


def cell_figures(seed: int, folder: Path) -> dict[str, float]:
    import torch
    from sklearn.neighbors import KNeighborsClassifier

    from neuroomics_bridge import Bridge, GeneEncoder, TextBackbone, datasets
    from neuroomics_bridge.evaluation.bridge_metrics import derangement
    from neuroomics_bridge.training import fit_alignment
    from neuroomics_bridge.training.args import PREFIX_LORA

    cohort = datasets.pbmc_cell_type_cohort()
    cohort = cohort.encode(
        {"gene": GeneEncoder(n_components=50, n_top_genes=2000)}, fit_on=cohort.split(seed=seed).train
    )
    split = cohort.split(seed=seed)
    torch.manual_seed(seed)
    bridge = Bridge(TextBackbone.from_pretrained("smollm2-135m-instruct"), {"gene": 50})
    options = {"split": split, "seed": seed, "enable_progress_bar": False}
    fit_alignment(bridge, cohort, "contrastive", root_dir=folder / f"cells-{seed}-c", **options)
    fit_alignment(
        bridge,
        cohort,
        "prefix",
        root_dir=folder / f"cells-{seed}-p",
        max_epochs=2,
        lora=PREFIX_LORA,
        prefix_layouts={"prefix_only": 1.0},
        class_prompt=datasets.PBMC_CELL_TYPES,
        **options,
    )
    titles = {text.split(".")[0].lower(): label for label, text in datasets.PBMC_CELL_TYPES.items()}
    test = split.test
    figures: dict[str, float] = {}
    for name, order in (
        ("prefix_only", np.arange(test.n_subjects)),
        ("prefix_only/shuffled", derangement(test.n_subjects, seed)),
    ):
        written = bridge.generate_report(
            {"gene": test.features["gene"][order]}, layout="prefix_only", max_new_tokens=40
        )
        named = [titles.get(r.text.split(".")[0].strip().lower()) for r in written]
        figures[f"{name}/cell_type"] = float(np.mean([n == t for n, t in zip(named, test.labels, strict=True)]))
    knn = KNeighborsClassifier(n_neighbors=15).fit(split.train.features["gene"], split.train.labels)
    figures["knn_pca/cell_type"] = float(knn.score(test.features["gene"], test.labels))
    figures["chance/cell_type"] = float(max(test.labels.count(c) for c in set(test.labels)) / test.n_subjects)
    return figures


def measure(name: str, figures_of: Callable[[int], dict[str, float]], seeds: list[int]) -> list[dict[str, float]]:
    """Each seed's figures, printed as soon as that seed is done (a long run may be cut short)."""
    per_seed = []
    for seed in seeds:
        per_seed.append(figures_of(seed))
        emit(name, seed=seed, **{k: round(v, 3) for k, v in per_seed[-1].items()})
    return per_seed


def summarise(name: str, per_seed: list[dict[str, float]], seeds: list[int]) -> None:
    keys = [k for k in per_seed[0] if all(k in f for f in per_seed)]
    means = {k: float(np.mean([f[k] for f in per_seed])) for k in keys}
    emit(f"{name}/mean", seeds=len(seeds), **{k: round(v, 3) for k, v in means.items()})
    comparisons = []
    if name == "grounding":
        for category in CATEGORIES:
            if f"prefix_only/{category}" in means and f"prefix_only/shuffled/{category}" in means:
                comparisons.append((f"prefix_only/{category}", f"prefix_only/shuffled/{category}"))
            if f"full/{category}" in means and f"retrieval_copy/{category}" in means:
                comparisons.append((f"full/{category}", f"retrieval_copy/{category}"))
        comparisons.append(("full/rouge_l", "retrieval_copy/rouge_l"))
        comparisons.append(("perplexity_shuffled", "perplexity_own"))
    else:
        comparisons = [
            ("prefix_only/cell_type", "knn_pca/cell_type"),
            ("prefix_only/cell_type", "prefix_only/shuffled/cell_type"),
        ]
    for figure, baseline in comparisons:
        worst = min(f[figure] - f[baseline] for f in per_seed)
        emit(
            f"{name}/{figure}-vs-{baseline}",
            ratio=round(means[figure] / means[baseline], 3) if means[baseline] else None,
            margin=round(means[figure] - means[baseline], 3),
            worst_seed_margin=round(worst, 3),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-cells", action="store_true")
    parser.add_argument("--compile-training", action="store_true", help="the demo's prefix stage compiled")
    args = parser.parse_args()
    keep_freed_memory()
    emit("machine", cpu=cpu_model())
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_demo:
            figures = measure("grounding", lambda s: demo_figures(s, Path(tmp), args.compile_training), args.seeds)
            summarise("grounding", figures, args.seeds)
        if not args.skip_cells:
            summarise("cells", measure("cells", lambda s: cell_figures(s, Path(tmp)), args.seeds), args.seeds)


if __name__ == "__main__":
    main()
