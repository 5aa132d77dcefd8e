"""The demo's HTML page: metrics, training curves, the aligned space, retrieval, example reports.

Plots are PNG files under ``<out>/plots``, drawn on matplotlib ``Figure`` objects (no pyplot, so
no display is needed and the process's plotting backend is left alone, e.g. a notebook's) and
written atomically; they are linked from ``<out>/index.html``, where every text is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from neuroomics_bridge.io import atomic_write_text, save_figure
from neuroomics_bridge.notice import RESEARCH_NOTICE
from neuroomics_bridge.reports.report import Report

if TYPE_CHECKING:
    from neuroomics_bridge.bridge import Bridge
    from neuroomics_bridge.data.cohort import Cohort

__all__ = ["write_page"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
.notice { background: #fff3cd; border: 1px solid #e0b400; padding: .6rem 1rem; font-weight: 600; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .3rem .6rem; vertical-align: top; }
img { max-width: 100%; border: 1px solid #eee; } .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
article.report { border: 1px solid #ddd; padding: .5rem 1rem; }
"""


def write_page(
    out: Path,
    bridge: Bridge,
    *,
    cohort: Cohort,
    test: Cohort,
    reports: list[Report],
    metrics: dict[str, float],
    histories: dict[str, pd.DataFrame] | None = None,
    title: str = "neuroomics-bridge demo",
    subjects: str = "",
) -> Path:
    """Draw the plots and write ``out/index.html``; returns the page's path.

    Parameters
    ----------
    out
        The folder (plots go to ``out/plots``).
    bridge
        The trained bridge the figures come from.
    cohort, test
        Every subject (the aligned-space map) and the held-out ones (retrieval matrix, reports).
    reports
        Reports of ``test`` subjects, shown beside their reference reports (the first 12).
    metrics
        Figures for the tables and the report-facts plot.
    histories
        Stage -> training history, for the training curves (none on an evaluation page).
    title, subjects
        The page's heading and its line about the subjects.
    """
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    images = {
        "Training curves": _training_curves(histories or {}, plots / "training_curves.png"),
        "The aligned space (PCA), coloured by diagnosis": _aligned_map(bridge, cohort, plots / "aligned_space.png"),
        "Gene-brain retrieval: cosine similarity of held-out subjects": _retrieval_matrix(
            bridge, test, plots / "retrieval_matrix.png"
        ),
        "Report facts stated correctly, by prompt layout, beside their controls": _grounding_plot(
            metrics, plots / "report_facts.png"
        ),
        "Zero-shot calibration on held-out subjects (temperature fitted on the validation fold)": _reliability_plot(
            bridge, test, plots / "reliability.png"
        ),
    }
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="notice">{html.escape(RESEARCH_NOTICE)}</p>',
        f"<p>Backbone <code>{html.escape(bridge.backbone.name)}</code>; adapters {html.escape(bridge.adapter_id)}; "
        f"{html.escape(subjects or f'{cohort.n_subjects} subjects')}.</p>",
        "<h2>Are reports about their subject?</h2>",
        "<p>Share of held-out subjects whose generated report states each known fact correctly (unstated "
        "counts as wrong). <i>full</i>: the subject's soft prefix and the evidence in the prompt (known "
        "covariates, zero-shot probabilities); <i>prefix_only</i>: the prefix and covariates alone; "
        "<i>evidence_only</i>: the prompt without the prefix; <i>/shuffled</i>: the same from another "
        "subject's vectors; <i>retrieval_copy</i>: the nearest reference subject's report; <i>copied</i>: "
        "share of sentences copied verbatim from the three nearest reference reports (<i>reference</i>: "
        "the same for the subject's own report, what shared phrasing alone gives).</p>",
        _grounding_table(metrics),
        "<h2>Held-out metrics</h2>",
        _metrics_table({k: v for k, v in metrics.items() if k.count("/") < 2 or not k.startswith("report/")}),
    ]
    for heading, path in images.items():
        if path is not None:
            body += [f"<h2>{html.escape(heading)}</h2>", f'<img src="plots/{path.name}" alt="{html.escape(heading)}">']
    body += ["<h2>Generated reports beside the reference reports</h2>", _side_by_side(reports, test)]
    page = out / "index.html"
    atomic_write_text(
        page,
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>",
    )
    return page


def _metrics_table(metrics: dict[str, float]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in metrics.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _grounding_rows(metrics: dict[str, float]) -> tuple[list[str], list[str]]:
    """Variants and figures of ``report/<variant>/<figure>`` metrics, in order of appearance."""
    variants, figures = [], []
    for key in metrics:
        parts = key.split("/")
        if parts[0] != "report" or len(parts) < 3:
            continue
        variant, figure = "/".join(parts[1:-1]), parts[-1]
        variants += [variant] if variant not in variants else []
        figures += [figure] if figure not in figures else []
    return variants, figures


def _grounding_table(metrics: dict[str, float]) -> str:
    variants, figures = _grounding_rows(metrics)
    if not variants:
        return "<p>No report evaluation in this run.</p>"
    head = "".join(f"<th>{html.escape(f)}</th>" for f in figures)
    rows = ""
    for variant in variants:
        cells = "".join(
            f"<td>{metrics[f'report/{variant}/{f}']:.2f}</td>" if f"report/{variant}/{f}" in metrics else "<td></td>"
            for f in figures
        )
        rows += f"<tr><td>{html.escape(variant)}</td>{cells}</tr>"
    return f"<table><tr><th>variant</th>{head}</tr>{rows}</table>"


def _grounding_plot(metrics: dict[str, float], path: Path) -> Path | None:
    from matplotlib.figure import Figure

    variants, figures = _grounding_rows(metrics)
    facts = [f for f in figures if f not in ("copied", "rouge_l")]
    variants = [v for v in variants if any(f"report/{v}/{f}" in metrics for f in facts)]  # not copied-only rows
    if not variants or not facts:
        return None
    figure = Figure(figsize=(10, 3.8))
    axis = figure.subplots()
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [metrics.get(f"report/{variant}/{f}", np.nan) for f in facts]
        hatch = "//" if "shuffled" in variant else None
        axis.bar(np.arange(len(facts)) + i * width, values, width, label=variant, hatch=hatch)
    axis.set_xticks(np.arange(len(facts)) + 0.4 - width / 2, facts)
    axis.set(ylabel="share stated correctly", ylim=(0, 1.05))
    axis.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return save_figure(figure, path)


def _reliability_plot(bridge: Bridge, test: Cohort, path: Path) -> Path | None:
    """Reliability diagram per modality: accuracy against confidence in ten bins, ECE in the legend."""
    from matplotlib.figure import Figure

    from neuroomics_bridge.evaluation.calibration import ece_floor, expected_calibration_error, reliability_bins
    from neuroomics_bridge.reports.prompts import CLASS_PROMPT, class_mapping

    if test.labels is None:
        return None
    classes = class_mapping(CLASS_PROMPT, test.labels)
    index = {name: i for i, name in enumerate(classes)}
    figure = Figure(figsize=(5, 4.5))
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    drawn = False
    for modality in bridge.modalities:
        rows = test.present(modality) if modality in test.features else np.zeros(test.n_subjects, bool)
        if rows.sum() < 2:
            continue
        probabilities = bridge.zero_shot(modality, test.features[modality][rows], classes)
        labels = [index[label] for label, keep in zip(test.labels, rows, strict=True) if keep]
        confidence, accuracy, counts = reliability_bins(probabilities, labels)
        used = counts > 0
        ece, floor = expected_calibration_error(probabilities, labels), ece_floor(probabilities)
        label = f"{modality} (ECE {ece:.3f}; a calibrated model: {floor:.3f})"
        axis.plot(confidence[used], accuracy[used], marker="o", label=label)
        drawn = True
    if not drawn:
        return None
    axis.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02))
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def _training_curves(histories: dict[str, pd.DataFrame], path: Path) -> Path | None:
    from matplotlib.figure import Figure

    usable = {stage: h for stage, h in histories.items() if not h.empty and "train/loss" in h}
    if not usable:
        return None
    figure = Figure(figsize=(5 * len(usable), 3.5))
    axes = figure.subplots(1, len(usable), squeeze=False)
    for axis, (stage, history) in zip(axes[0], usable.items(), strict=True):
        for column, label in (("train/loss", "train"), ("val/loss", "validation")):
            if column in history:
                curve = history.dropna(subset=[column]).groupby("epoch")[column].mean()
                axis.plot(curve.index + 1, curve.to_numpy(), marker="o", label=label)
        axis.set(title=f"{stage} stage", xlabel="epoch", ylabel="loss")
        axis.legend()
    return save_figure(figure, path)


def _aligned_map(bridge: Bridge, cohort: Cohort, path: Path) -> Path | None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    points, labels, kinds = [], [], []
    for modality in bridge.modalities:
        rows = cohort.present(modality)
        points.append(bridge.embed(modality, cohort.features[modality][rows]))
        labels += [label for label, keep in zip(cohort.labels or [""] * cohort.n_subjects, rows, strict=True) if keep]
        kinds += [modality] * int(rows.sum())
    if not points:
        return None
    classes = sorted(set(labels))
    prompts = bridge.embed_text([f"Impression: {c}." for c in classes])
    pca = PCA(n_components=2).fit(np.concatenate(points))
    projected, anchors = pca.transform(np.concatenate(points)), pca.transform(prompts)
    figure = Figure(figsize=(7, 5.5))
    axis = figure.subplots()
    markers = dict(zip(bridge.modalities, "os^vD", strict=False))
    colours = colormaps["tab10"]
    for c, label in enumerate(classes):
        for modality in bridge.modalities:
            keep = [
                i for i, (lab, kind) in enumerate(zip(labels, kinds, strict=True)) if lab == label and kind == modality
            ]
            axis.scatter(*projected[keep].T, s=14, alpha=0.6, color=colours(c), marker=markers[modality],
                         label=f"{label} ({modality})")  # fmt: skip
        axis.scatter(*anchors[c], s=220, marker="*", color=colours(c), edgecolor="black")
    axis.set(title="subjects by modality; stars: class prompts", xlabel="PC1", ylabel="PC2")
    axis.legend(fontsize=7, ncol=2)
    return save_figure(figure, path)


def _retrieval_matrix(bridge: Bridge, test: Cohort, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    if len(bridge.modalities) < 2:
        return None
    first, second = bridge.modalities[:2]
    rows = test.present(first) & test.present(second)
    if rows.sum() < 2:
        return None
    labels = np.asarray(test.labels or [""] * test.n_subjects)[rows]
    order = np.argsort(labels, kind="stable")
    a = bridge.embed(first, test.features[first][rows])[order]
    b = bridge.embed(second, test.features[second][rows])[order]
    figure = Figure(figsize=(6, 5))
    axis = figure.subplots()
    image = axis.imshow(a @ b.T, cmap="viridis")
    figure.colorbar(image, ax=axis, label="cosine similarity")
    axis.set(title=f"{first} (rows) vs {second} (columns), sorted by diagnosis", xlabel=second, ylabel=first)
    boundaries = np.flatnonzero(labels[order][1:] != labels[order][:-1]) + 0.5
    for edge in boundaries:
        axis.axhline(edge, color="white", lw=0.6)
        axis.axvline(edge, color="white", lw=0.6)
    return save_figure(figure, path)


def _side_by_side(reports: list[Report], test: Cohort) -> str:
    reference = dict(zip(test.subject_ids, test.reports or [""] * test.n_subjects, strict=True))
    truth = dict(zip(test.subject_ids, test.labels or [""] * test.n_subjects, strict=True))
    rows = []
    for report in reports[:12]:
        label = html.escape(truth[report.subject_id])
        rows.append(
            f'<div class="pair">{report.to_html()}<article class="report"><h3>reference ({label})</h3>'
            f"<p>{html.escape(reference[report.subject_id])}</p></article></div>"
        )
    return "".join(rows)
