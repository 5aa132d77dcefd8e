"""Evaluating a trained bridge on a labelled cohort: zero-shot, retrieval, report likelihood, and
generated reports fact by fact beside their baselines and ablations."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from neuroomics_bridge.errors import DataError
from neuroomics_bridge.evaluation.calibration import ece_floor, expected_calibration_error, with_temperature
from neuroomics_bridge.evaluation.factuality import (
    cohort_facts,
    copy_rate,
    fact_accuracy,
    retrieval_copy,
    synthetic_facts,
)
from neuroomics_bridge.evaluation.metrics import classification_metrics, recall_at_k, report_label_accuracy, rouge_l
from neuroomics_bridge.reports.prompts import (
    CLASS_PROMPT,
    DEFAULT_LAYOUT,
    ClassPrompt,
    PromptLayout,
    class_mapping,
    get_layout,
    report_prompt,
)
from neuroomics_bridge.reports.report import REPORT_BATCH_SIZE, REPORT_MAX_NEW_TOKENS

if TYPE_CHECKING:
    from neuroomics_bridge.bridge.model import Bridge
    from neuroomics_bridge.data.cohort import Cohort
    from neuroomics_bridge.reports.report import Report
    from neuroomics_bridge.retrieval import ReferenceSet

__all__ = [
    "ReportEvaluation",
    "derangement",
    "evaluate_bridge",
    "evaluate_reports",
    "report_label_metrics",
    "report_perplexity",
]


def evaluate_bridge(
    bridge: Bridge,
    cohort: Cohort,
    *,
    stage: str = "contrastive",
    class_prompt: ClassPrompt = CLASS_PROMPT,
    ks: Sequence[int] = (1, 5),
    classes: Sequence[str] | None = None,
) -> dict[str, float]:
    """Held-out metrics of a bridge on an encoded cohort.

    ``"contrastive"``: zero-shot accuracy / macro-F1 / AUROC per modality, with one prompt per
    class (``class_prompt`` formatted with the class, or a mapping class -> prompt text, whose
    keys are then the classes), recall@k between modality pairs both ways and from each modality
    to its own report, with chance levels. ``"prefix"``: report perplexity with the matched
    subject's prefix vs a shuffled subject's (the grounding control). A modality no subject of
    ``cohort`` has is left out of the figures.

    ``classes``: labels whose distinct values zero-shot chooses among. Pass the whole cohort's
    when ``cohort`` is a held-out fold, since a class too rare to reach the fold is still a wrong
    answer the bridge may give (default: the labels ``cohort`` holds).
    """
    if stage == "prefix":
        matched, shuffled = report_perplexity(bridge, cohort), report_perplexity(bridge, cohort, shuffle=True)
        return {
            "prefix/perplexity_matched": matched,
            "prefix/perplexity_shuffled": shuffled,
            "prefix/perplexity_gap": shuffled - matched,
        }
    metrics: dict[str, float] = {}
    if cohort.labels is not None:
        choices = class_mapping(class_prompt, cohort.labels if classes is None else classes)
        names = list(choices)
        for modality in bridge.modalities:
            rows = cohort.present(modality)
            if not rows.any():
                continue
            probabilities = bridge.zero_shot(modality, cohort.features[modality][rows], choices)
            labels = [label for label, keep in zip(cohort.labels, rows, strict=True) if keep]
            for name, value in classification_metrics(probabilities, labels, names).items():
                metrics[f"zero_shot/{modality}/{name}"] = value
            metrics |= _calibration(bridge, modality, probabilities, labels, names)
    reports = bridge.embed_text(cohort.reports) if cohort.reports is not None else None
    for a, b in itertools.combinations(bridge.modalities, 2):
        rows = cohort.present(a) & cohort.present(b)
        if not rows.any():
            continue
        ea, eb = bridge.embed(a, cohort.features[a][rows]), bridge.embed(b, cohort.features[b][rows])
        for k in ks:
            metrics[f"recall@{k}/{a}->{b}"] = recall_at_k(ea, eb, k)
            metrics[f"recall@{k}/{b}->{a}"] = recall_at_k(eb, ea, k)
            metrics[f"recall@{k}/{a}<->{b}/chance"] = min(k / max(int(rows.sum()), 1), 1.0)
    if reports is not None:
        for modality in bridge.modalities:
            rows = cohort.present(modality)
            if not rows.any():
                continue
            embedded = bridge.embed(modality, cohort.features[modality][rows])
            for k in ks:
                metrics[f"recall@{k}/{modality}->report"] = recall_at_k(embedded, reports[rows], k)
    return metrics


def _calibration(
    bridge: Bridge, modality: str, probabilities: np.ndarray, labels: Sequence[str], names: Sequence[str]
) -> dict[str, float]:
    """ECE of the (temperature-scaled) zero-shot probabilities beside the floor a calibrated model
    scores on as many subjects, ECE of the raw probabilities, and the temperature."""
    index = {name: i for i, name in enumerate(names)}
    known = [label in index for label in labels]
    if not any(known):
        return {}
    temperature = float(getattr(bridge.adapters, f"temperature_{modality}"))
    scaled = probabilities[known]
    truth = [index[label] for label, keep in zip(labels, known, strict=True) if keep]
    return {
        f"zero_shot/{modality}/ece": expected_calibration_error(scaled, truth),
        f"zero_shot/{modality}/ece_floor": ece_floor(scaled),
        f"zero_shot/{modality}/ece_uncalibrated": expected_calibration_error(
            with_temperature(scaled, 1 / temperature), truth
        ),
        f"zero_shot/{modality}/temperature": temperature,
    }


def report_perplexity(
    bridge: Bridge,
    cohort: Cohort,
    *,
    shuffle: bool = False,
    layout: str | PromptLayout = "prefix_only",
    seed: int = 0,
    batch_size: int = 8,
) -> float:
    """Token perplexity of the cohort's reports given each subject's soft prefix and prompt.

    Parameters
    ----------
    bridge, cohort
        A trained bridge and an encoded cohort with reports (covariates, if any, are stated as
        the layout says).
    shuffle
        Give every report another subject's vectors (a fixed cyclic derangement drawn from
        ``seed``; its own covariates stay): if the prefix carries the subject, perplexity rises.
    layout
        The prompt layout (default ``"prefix_only"``: nothing but the prefix tells subjects apart).
    """
    import torch

    if cohort.reports is None:
        raise DataError("report_perplexity: the cohort has no reports")
    order = derangement(cohort.n_subjects, seed) if shuffle else np.arange(cohort.n_subjects)
    chosen = get_layout(layout)
    inputs = {m: x[order] for m, x in cohort.features.items()}
    classes = sorted(set(cohort.labels or []))
    evidence = bridge.evidence(inputs, covariates=cohort.covariates, classes=classes)
    prompts = [report_prompt(bridge.config.report_prompt, ev, chosen) for ev in evidence]
    features = {m: torch.from_numpy(np.nan_to_num(x)) for m, x in inputs.items()}
    present = {m: torch.from_numpy(~np.isnan(x).all(axis=1) & chosen.prefix) for m, x in inputs.items()}
    total_nll, total_tokens = 0.0, 0
    bridge.adapters.eval()
    with torch.inference_mode():
        for start in range(0, cohort.n_subjects, batch_size):
            rows = slice(start, start + batch_size)
            nll, tokens = bridge.report_nll(
                {m: x[rows] for m, x in features.items()},
                {m: p[rows] for m, p in present.items()},
                cohort.reports[rows],
                prompts[rows],
            )
            total_nll += float(nll.sum())
            total_tokens += int(tokens.sum())
    return float(np.exp(total_nll / total_tokens))


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` that moves every index (a random cycle), for shuffled controls."""
    order = np.arange(n)
    if n > 1:
        cycle = np.random.default_rng(seed).permutation(n)
        order[cycle] = np.roll(cycle, -1)
    return order


@dataclasses.dataclass
class ReportEvaluation:
    """Reports of every variant of one evaluation and the metrics computed from them.

    Attributes
    ----------
    metrics
        ``report/<variant>/<figure>`` (see :func:`evaluate_reports`).
    reports
        Variant -> one :class:`Report` per test subject, in cohort order.
    """

    metrics: dict[str, float]
    reports: dict[str, list[Report]]


def evaluate_reports(
    bridge: Bridge,
    cohort: Cohort,
    *,
    reference: ReferenceSet | None = None,
    layouts: Sequence[str] = ("full", "prefix_only", "evidence_only"),
    shuffled: bool = True,
    facts: Sequence[Mapping[str, object]] | None = None,
    fact_columns: Sequence[str] = (),
    class_prompt: ClassPrompt = CLASS_PROMPT,
    seed: int = 0,
    max_new_tokens: int = REPORT_MAX_NEW_TOKENS,
    batch_size: int = REPORT_BATCH_SIZE,
    show_progress: bool | None = None,
) -> ReportEvaluation:
    """Generated reports scored fact by fact, beside their baselines and ablations, in one run.

    For each prompt layout (``"full"``: prefix + evidence; ``"prefix_only"``; ``"evidence_only"``;
    see :data:`~neuroomics_bridge.reports.prompts.LAYOUTS`) the test subjects' reports are
    generated from their own vectors and, with ``shuffled``, from another subject's (a cyclic
    derangement; the subject's own covariates stay), all variants decoded together
    (:meth:`Bridge.generate_report_variants`); the retrieval-copy baseline returns the top
    retrieved reference subject's report. Every variant gets, per fact category, the share of
    subjects whose report states the fact correctly (:func:`~.factuality.fact_accuracy`; unstated
    is wrong), ROUGE-L against the subject's own report, and the share of its sentences copied
    verbatim from the reports of the subject's three nearest reference subjects
    (:func:`~.factuality.copy_rate`), beside the same share for the subject's own reference report
    (``report/reference/copied``: what shared phrasing alone gives a correct report). Chance per
    category is the most frequent true value's share.

    Parameters
    ----------
    bridge
        A trained bridge (both stages).
    cohort
        Encoded held-out subjects with labels (and reports, for ROUGE-L and the copy baseline).
    reference
        The reference set (training fold) neighbours are retrieved from; needed for the
        retrieval-copy baseline and the copy rate.
    facts
        Per-subject facts; default :func:`~.factuality.synthetic_facts` for a cohort with a
        ``severity`` phenotype (the synthetic generator's), else :func:`~.factuality.cohort_facts`
        with ``fact_columns`` (a user's categorical covariate or phenotype columns).
    """
    if cohort.labels is None:
        raise DataError("evaluate_reports: the cohort needs labels (the diagnosis facts)")
    classes = sorted(set(cohort.labels))
    truth = list(facts) if facts is not None else _default_facts(cohort, fact_columns)
    options = {
        "subject_ids": cohort.subject_ids,
        "covariates": cohort.covariates,
        "reference": reference,
        "classes": classes,
        "class_prompt": class_prompt,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "show_progress": show_progress,
    }
    orders = {"": np.arange(cohort.n_subjects)}
    if shuffled:
        orders["/shuffled"] = derangement(cohort.n_subjects, seed)
    variants = {
        f"{layout}{suffix}": ({m: x[order] for m, x in cohort.features.items()}, layout)
        for layout in layouts
        for suffix, order in orders.items()
    }
    reports = bridge.generate_report_variants(variants, **options)
    metrics: dict[str, float] = {}
    for variant, written in reports.items():
        texts = [r.text for r in written]
        metrics |= _scores(variant, texts, truth, classes, cohort.reports)
        if reference is not None:
            neighbours = [[n.report for n in r.evidence.neighbours] for r in written]
            metrics[f"report/{variant}/copied"] = copy_rate(texts, neighbours)
    if reference is not None and reports:
        neighbours = [[n.report for n in r.evidence.neighbours] for r in reports[layouts[0]]]
        metrics |= _scores("retrieval_copy", retrieval_copy(neighbours), truth, classes, cohort.reports)
        if cohort.reports is not None:
            # Reports of one cohort share set phrases, so a correct report also matches some of its
            # neighbours' sentences: the subject's own reference report shows how many.
            metrics["report/reference/copied"] = copy_rate(list(cohort.reports), neighbours)
    for category in sorted({key for fact in truth for key in fact}):
        values = [fact[category] for fact in truth if category in fact and category != "age"]
        if values:
            metrics[f"report/chance/{category}"] = max(values.count(v) for v in set(values)) / len(values)
    return ReportEvaluation(metrics=metrics, reports=reports)


def report_label_metrics(
    evaluation: ReportEvaluation, cohort: Cohort, layout: str = DEFAULT_LAYOUT
) -> dict[str, float]:
    """The diagnosis each impression names (``Report.label``) in ``layout``'s reports, against
    the cohort's labels, for the own and the shuffled-subject reports, beside chance (the most
    frequent label's share), and the share of impressions that name exactly one class."""
    if cohort.labels is None:
        return {}
    counts = np.unique(cohort.labels, return_counts=True)[1]
    own, shuffled = evaluation.reports[layout], evaluation.reports.get(f"{layout}/shuffled")
    metrics = {"report/label_accuracy": report_label_accuracy(own, cohort.labels)}
    if shuffled is not None:
        metrics["report/label_accuracy_shuffled"] = report_label_accuracy(shuffled, cohort.labels)
    metrics["report/label_accuracy_chance"] = float((counts / counts.sum()).max())
    metrics["report/parseable"] = float(np.mean([r.label is not None for r in own]))
    return metrics


def _scores(
    variant: str,
    texts: Sequence[str],
    truth: Sequence[Mapping[str, object]],
    classes: Sequence[str],
    references: Sequence[str] | None,
) -> dict[str, float]:
    scores = {f"report/{variant}/{k}": v for k, v in fact_accuracy(texts, truth, classes=classes).items()}
    if references is not None:
        scores[f"report/{variant}/rouge_l"] = rouge_l(list(texts), list(references))
    return scores


def _default_facts(cohort: Cohort, columns: Sequence[str]) -> list[dict[str, object]]:
    """The synthetic generator's facts for a cohort with its numeric ``severity`` phenotype, and
    every other named column's; else the named columns' (a text severity is a user's column)."""
    phenotypes = cohort.phenotypes
    synthetic = (
        phenotypes is not None and "severity" in phenotypes and np.issubdtype(phenotypes["severity"].dtype, np.number)
    )
    if not synthetic:
        return cohort_facts(cohort, columns=columns)
    facts = synthetic_facts(cohort)
    extra = [c for c in columns if c not in ("age", "sex", "severity")]  # those three it already has
    for fact, more in zip(facts, cohort_facts(cohort, columns=extra), strict=True):
        fact.update(more)
    return facts
