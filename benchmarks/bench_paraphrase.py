"""Does zero-shot survive rewording? Accuracy with class texts in other words, calibration, unseen classes.

1. pbmc68k (scanpy's 700 real cells, 10 types): the bridge is trained with the library's
   ``PBMC_CELL_TYPES`` texts (``single``) or with a prompt ensemble of those texts and the type
   names (``views``: several text views per class in training, the ensemble at zero-shot); then
   zero-shot on the test fold with the training wording and with each of the five wording sets of
   ``data/paraphrases.py`` (never seen in training), beside kNN on the PCA features of the same
   split; expected calibration error (ECE) before and after the temperature fitted on the
   validation fold.
   ``leave_one_set_out``: for each wording set, trained with the library's texts plus the other
   four sets as text views and scored with the held-out set alone (do more training views make
   an unseen vocabulary work?).
   ``shuffled_pairs``: the control. Trained as ``single`` but with the texts (and labels) permuted
   among the training and validation cells (each cell paired with another cell's text), scored as
   ``single``; beside the majority class's share of the test fold (what the pairing is worth).
2. Unseen classes: three cell types left out of the training and validation folds and of the
   gene encoder's fit (its genes and components); zero-shot on
   the test cells of those three among their three texts, beside chance.
3. Synthetic cohort (the demo's 400 subjects, 30 contrastive epochs): zero-shot per modality with
   the training wording (``Impression: <diagnosis>.``) and each of five wording sets; the worst
   set's accuracy as a share of the training wording's; ECE.

Every wording is scored twice: as the library does by default (class texts centred on the
training texts' mean) and with ``center_prompts=True`` (``centred/``: each set centred on its own
mean before the text head, see ``Bridge.class_embeddings``). Each ECE stands beside
``ece_floor``, the ECE a perfectly calibrated model scores on as many test subjects.

Run: ``python benchmarks/bench_paraphrase.py [--seeds 0 1 2] [--skip-synthetic]``. One JSON line per
figure set and seed, then the means; ratios against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from common import emit

from neuroomics_bridge.backbone.calibration import cpu_model
from neuroomics_bridge.evaluation.calibration import ece_floor, expected_calibration_error

if TYPE_CHECKING:
    from neuroomics_bridge import Bridge

UNSEEN = ("CD34+", "Dendritic", "CD19+ B")
CENTRING = (("", False), ("centred/", True))
Pooled = list[tuple[np.ndarray, list[int]]]  # (probabilities, true class index) of each seed's test fold


def accuracy(probabilities: np.ndarray, labels: list[str], names: list[str]) -> float:
    return float(np.mean(np.asarray(names)[probabilities.argmax(axis=1)] == np.asarray(labels)))


def class_indices(labels: list[str], names: list[str]) -> list[int]:
    return [names.index(label) for label in labels]


def ece(probabilities: np.ndarray, labels: list[str], names: list[str]) -> float:
    return expected_calibration_error(probabilities, class_indices(labels, names))


def training_ensemble(texts: dict[str, str]) -> dict[str, list[str]]:
    """The training wording as several views: the description and the type's name, in two templates."""
    from neuroomics_bridge.reports.prompts import prompt_ensemble

    return prompt_ensemble(["{}", "Cell type: {}"], {label: [text, label] for label, text in texts.items()})


def encoded_pbmc(seed: int, leave_out: Collection[str] = ()):
    """pbmc68k encoded with a PCA fitted on the seed's training fold (without the cells of the
    types in ``leave_out``, so that an unseen type shapes none of the features), and its split."""
    from neuroomics_bridge import GeneEncoder, datasets

    cohort = datasets.pbmc_cell_type_cohort()
    train = cohort.split(seed=seed).train
    fitted_on = [cell for cell, label in zip(train.subject_ids, train.labels, strict=True) if label not in leave_out]
    cohort = cohort.encode({"gene": GeneEncoder(n_components=50, n_top_genes=2000)}, fit_on=fitted_on)
    return cohort, cohort.split(seed=seed)


def pbmc_bridge(backbone, cohort, split, seed: int, root_dir: Path, class_prompt) -> Bridge:
    """A bridge on pbmc68k's 50 gene components, through the contrastive stage with ``class_prompt``
    (its adapters' initial weights seeded by ``seed``)."""
    import torch

    from neuroomics_bridge import Bridge, fit_alignment

    torch.manual_seed(seed)
    bridge = Bridge(backbone, {"gene": 50})
    fit_alignment(bridge, cohort, "contrastive", split=split, seed=seed, root_dir=root_dir,
                  class_prompt=class_prompt, enable_progress_bar=False)  # fmt: skip
    return bridge


def leave_one_set_out(seed: int, folder: Path, backbone) -> dict[str, float]:
    """Per wording set: trained with the library's texts plus the other four sets as text views,
    scored with that (unseen) set's wording alone."""
    from neuroomics_bridge import datasets
    from neuroomics_bridge.data.paraphrases import PBMC_WORDING_SETS

    cohort, split = encoded_pbmc(seed)
    test, X = split.test, split.test.features["gene"]
    figures: dict[str, float] = {}
    for held_out, wording in PBMC_WORDING_SETS.items():
        others = [w for name, w in PBMC_WORDING_SETS.items() if name != held_out]
        views = {label: [text, *(w[label] for w in others)] for label, text in datasets.PBMC_CELL_TYPES.items()}
        bridge = pbmc_bridge(backbone, cohort, split, seed, folder / f"loo-{held_out}-{seed}", views)
        figures[f"set/{held_out}"] = accuracy(bridge.zero_shot("gene", X, wording), test.labels, list(wording))
    sets = [figures[f"set/{name}"] for name in PBMC_WORDING_SETS]
    figures["sets_mean"], figures["sets_worst"] = float(np.mean(sets)), float(np.min(sets))
    return figures


def shuffled_pairs_figures(seed: int, folder: Path, backbone) -> dict[str, float]:
    """Zero-shot of a bridge trained on cells paired with another cell's type: the control."""
    import dataclasses

    from neuroomics_bridge import datasets
    from neuroomics_bridge.evaluation.bridge_metrics import derangement

    cohort, split = encoded_pbmc(seed)

    def shuffled(fold, offset: int):
        order = derangement(fold.n_subjects, seed + offset)  # the text (report) and its label move together
        return dataclasses.replace(
            fold, reports=[fold.reports[i] for i in order], labels=[fold.labels[i] for i in order]
        )

    split = dataclasses.replace(split, train=shuffled(split.train, 0), val=shuffled(split.val, 1))
    bridge = pbmc_bridge(backbone, cohort, split, seed, folder / f"shuffled-{seed}", datasets.PBMC_CELL_TYPES)
    test, names = split.test, list(datasets.PBMC_CELL_TYPES)
    probabilities = bridge.zero_shot("gene", test.features["gene"], datasets.PBMC_CELL_TYPES)
    return {
        "training_wording": accuracy(probabilities, test.labels, names),
        "majority_share": max(test.labels.count(c) for c in set(test.labels)) / test.n_subjects,
    }


def pbmc_figures(seed: int, folder: Path, backbone, variant: str, pooled: Pooled) -> dict[str, float]:
    from sklearn.neighbors import KNeighborsClassifier

    from neuroomics_bridge import datasets
    from neuroomics_bridge.data.paraphrases import PBMC_WORDING_SETS

    cohort, split = encoded_pbmc(seed)
    trained_with = datasets.PBMC_CELL_TYPES if variant == "single" else training_ensemble(datasets.PBMC_CELL_TYPES)
    bridge = pbmc_bridge(backbone, cohort, split, seed, folder / f"pbmc-{variant}-{seed}", trained_with)
    test, X = split.test, split.test.features["gene"]
    names = list(trained_with)
    figures: dict[str, float] = {}
    for prefix, centred in CENTRING:
        figures[f"{prefix}training_wording"] = accuracy(
            bridge.zero_shot("gene", X, trained_with, center_prompts=centred), test.labels, names
        )
        for name, wording in PBMC_WORDING_SETS.items():
            probabilities = bridge.zero_shot("gene", X, wording, center_prompts=centred)
            figures[f"{prefix}set/{name}"] = accuracy(probabilities, test.labels, list(wording))
        sets = [figures[f"{prefix}set/{name}"] for name in PBMC_WORDING_SETS]
        figures[f"{prefix}sets_mean"], figures[f"{prefix}sets_worst"] = float(np.mean(sets)), float(np.min(sets))
    knn = KNeighborsClassifier(n_neighbors=15).fit(split.train.features["gene"], split.train.labels)
    figures["knn_pca"] = float(knn.score(X, test.labels))
    probabilities = bridge.zero_shot("gene", X, trained_with)
    figures["ece"], figures["ece_floor"] = ece(probabilities, test.labels, names), ece_floor(probabilities)
    pooled.append((probabilities, class_indices(test.labels, names)))
    figures["ece_uncalibrated"] = ece(bridge.zero_shot("gene", X, trained_with, calibrated=False), test.labels, names)
    figures["temperature"] = float(bridge.adapters.temperature_gene)
    return figures


def unseen_figures(seed: int, folder: Path, backbone) -> dict[str, float]:
    import dataclasses

    from neuroomics_bridge import datasets
    from neuroomics_bridge.data.paraphrases import PBMC_WORDING_SETS

    cohort, split = encoded_pbmc(seed, leave_out=UNSEEN)

    def seen_only(fold):
        return fold.subset([s for s, label in zip(fold.subject_ids, fold.labels, strict=True) if label not in UNSEEN])

    held = split.test.subset(
        [s for s, lab in zip(split.test.subject_ids, split.test.labels, strict=True) if lab in UNSEEN]
    )
    split = dataclasses.replace(
        split, train=seen_only(split.train), val=seen_only(split.val), test=seen_only(split.test)
    )
    seen_texts = {k: v for k, v in datasets.PBMC_CELL_TYPES.items() if k not in UNSEEN}
    bridge = pbmc_bridge(backbone, cohort, split, seed, folder / f"unseen-{seed}", seen_texts)
    names, X = list(UNSEEN), held.features["gene"]
    figures = {"n_test_cells": float(held.n_subjects)}
    wordings = {"training": datasets.PBMC_CELL_TYPES, **PBMC_WORDING_SETS}
    for prefix, centred in CENTRING:
        for name, wording in wordings.items():
            texts = {label: wording[label] for label in names}
            probabilities = bridge.zero_shot("gene", X, texts, center_prompts=centred)
            figures[f"{prefix}unseen/{name}"] = accuracy(probabilities, held.labels, names)
    figures["chance"] = max(held.labels.count(c) for c in names) / held.n_subjects
    return figures


def synthetic_figures(seed: int, folder: Path, backbone, pooled: dict[str, Pooled]) -> dict[str, float]:
    import torch

    from neuroomics_bridge import Bridge, fit_alignment
    from neuroomics_bridge.data.paraphrases import DIAGNOSIS_WORDING_SETS
    from neuroomics_bridge.datasets import synthetic_cohort
    from neuroomics_bridge.demo import FULL
    from neuroomics_bridge.encoders.cohort import default_cohort_encoder
    from neuroomics_bridge.reports.prompts import CLASS_PROMPT, class_mapping

    raw = synthetic_cohort(FULL.subjects, seed=seed)
    cohort = default_cohort_encoder(raw).fit_transform(raw, raw.split(seed=seed).train)
    split = cohort.split(seed=seed)
    torch.manual_seed(seed)
    bridge = Bridge(backbone, {m: x.shape[1] for m, x in cohort.features.items()})
    fit_alignment(bridge, cohort, "contrastive", split=split, seed=seed, max_epochs=FULL.epochs("contrastive"),
                  root_dir=folder / f"synthetic-{seed}", enable_progress_bar=False)  # fmt: skip
    test = split.test
    training = class_mapping(CLASS_PROMPT, cohort.labels)
    names = list(training)
    figures: dict[str, float] = {}
    for modality in bridge.modalities:
        rows = test.present(modality)
        X, labels = test.features[modality][rows], [lab for lab, keep in zip(test.labels, rows, strict=True) if keep]
        for prefix, centred in ((f"{modality}/{p}", c) for p, c in CENTRING):
            base = accuracy(bridge.zero_shot(modality, X, training, center_prompts=centred), labels, names)
            figures[f"{prefix}training_wording"] = base
            sets = []
            for name, wording in DIAGNOSIS_WORDING_SETS.items():
                probabilities = bridge.zero_shot(modality, X, wording, center_prompts=centred)
                figures[f"{prefix}set/{name}"] = accuracy(probabilities, labels, list(wording))
                sets.append(figures[f"{prefix}set/{name}"])
            figures[f"{prefix}sets_mean"], figures[f"{prefix}sets_worst"] = float(np.mean(sets)), float(min(sets))
            figures[f"{prefix}worst_share_of_training"] = float(min(sets) / base) if base else 0.0
        probabilities = bridge.zero_shot(modality, X, training)
        pooled.setdefault(modality, []).append((probabilities, class_indices(labels, names)))
        figures[f"{modality}/ece"], figures[f"{modality}/ece_floor"] = (
            ece(probabilities, labels, names),
            ece_floor(probabilities),
        )
        figures[f"{modality}/ece_uncalibrated"] = ece(
            bridge.zero_shot(modality, X, training, calibrated=False), labels, names
        )
    return figures


def emit_pooled_ece(name: str, pooled: Pooled) -> None:
    """ECE over every seed's test predictions together, beside the floor for that many subjects:
    one test fold is too small to tell an ECE of 0.05 from perfect calibration."""
    probabilities = np.concatenate([p for p, _ in pooled])
    labels = [label for _, fold in pooled for label in fold]
    emit(f"{name}/pooled_ece", subjects=len(labels), ece=round(expected_calibration_error(probabilities, labels), 3),
         ece_floor=round(ece_floor(probabilities), 3), goal=0.05)  # fmt: skip


def summarise(name: str, per_seed: list[dict[str, float]], seeds: list[int]) -> dict[str, float]:
    for seed, figures in zip(seeds, per_seed, strict=True):
        emit(name, seed=seed, **{k: round(v, 3) for k, v in figures.items()})
    means = {k: float(np.mean([f[k] for f in per_seed])) for k in per_seed[0]}
    emit(f"{name}/mean", seeds=len(seeds), **{k: round(v, 3) for k, v in means.items()})
    return means


def main() -> None:
    from neuroomics_bridge import TextBackbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    emit("machine", cpu=cpu_model())
    backbone = TextBackbone.from_pretrained("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        by_variant: dict[str, dict[str, float]] = {}
        for variant in ("single", "views"):
            pooled: Pooled = []
            means = by_variant[variant] = summarise(
                f"pbmc/{variant}", [pbmc_figures(s, folder, backbone, variant, pooled) for s in args.seeds], args.seeds
            )
            emit_pooled_ece(f"pbmc/{variant}", pooled)
            emit(f"pbmc/{variant}/vs-knn", worst_margin=round(means["sets_worst"] - means["knn_pca"], 3),
                 mean_margin=round(means["sets_mean"] - means["knn_pca"], 3),
                 ratio=round(means["sets_mean"] / means["knn_pca"], 3))  # fmt: skip
        shuffled = summarise("pbmc/shuffled_pairs", [shuffled_pairs_figures(s, folder, backbone) for s in args.seeds],
                             args.seeds)  # fmt: skip
        margin = by_variant["single"]["training_wording"] - shuffled["training_wording"]
        emit("pbmc/single/vs-shuffled_pairs", margin=round(margin, 3))
        summarise("pbmc/leave_one_set_out", [leave_one_set_out(s, folder, backbone) for s in args.seeds], args.seeds)
        summarise("pbmc/unseen", [unseen_figures(s, folder, backbone) for s in args.seeds], args.seeds)
        if not args.skip_synthetic:
            by_modality: dict[str, Pooled] = {}
            per_seed = [synthetic_figures(s, folder, backbone, by_modality) for s in args.seeds]
            summarise("synthetic", per_seed, args.seeds)
            for modality, pooled in by_modality.items():
                emit_pooled_ece(f"synthetic/{modality}", pooled)


if __name__ == "__main__":
    main()
