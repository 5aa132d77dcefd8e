"""Evaluating a trained bridge on a labelled cohort: zero-shot, retrieval, report likelihood."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from neuroomics_bridge.errors import DataError
from neuroomics_bridge.evaluation.metrics import classification_metrics, recall_at_k
from neuroomics_bridge.reports.prompts import CLASS_PROMPT, ClassPrompt

if TYPE_CHECKING:
    from neuroomics_bridge.bridge.model import Bridge
    from neuroomics_bridge.data.cohort import Cohort

__all__ = ["evaluate_bridge", "report_perplexity"]


def evaluate_bridge(
    bridge: Bridge,
    cohort: Cohort,
    *,
    stage: str = "contrastive",
    class_prompt: ClassPrompt = CLASS_PROMPT,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Held-out metrics of a bridge on an encoded cohort.

    ``"contrastive"``: zero-shot accuracy / macro-F1 / AUROC per modality, with one prompt per
    label (``class_prompt`` formatted with the label, or a mapping label -> prompt text, whose
    keys are then the classes), recall@k between modality pairs both ways and from each modality
    to its own report, with chance levels. ``"prefix"``: report perplexity with the matched
    subject's prefix vs a shuffled subject's (the grounding control).
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
        if isinstance(class_prompt, str):
            names = sorted(set(cohort.labels))
            prompts = [class_prompt.format(label=name) for name in names]
        else:
            names, prompts = list(class_prompt), list(class_prompt.values())
        for modality in bridge.modalities:
            rows = cohort.present(modality)
            probabilities = bridge.zero_shot(modality, cohort.features[modality][rows], prompts)
            labels = [label for label, keep in zip(cohort.labels, rows, strict=True) if keep]
            for name, value in classification_metrics(probabilities, labels, names).items():
                metrics[f"zero_shot/{modality}/{name}"] = value
    reports = bridge.embed_text(cohort.reports) if cohort.reports is not None else None
    for a, b in itertools.combinations(bridge.modalities, 2):
        rows = cohort.present(a) & cohort.present(b)
        ea, eb = bridge.embed(a, cohort.features[a][rows]), bridge.embed(b, cohort.features[b][rows])
        for k in ks:
            metrics[f"recall@{k}/{a}->{b}"] = recall_at_k(ea, eb, k)
            metrics[f"recall@{k}/{b}->{a}"] = recall_at_k(eb, ea, k)
            metrics[f"recall@{k}/{a}<->{b}/chance"] = min(k / max(int(rows.sum()), 1), 1.0)
    if reports is not None:
        for modality in bridge.modalities:
            rows = cohort.present(modality)
            embedded = bridge.embed(modality, cohort.features[modality][rows])
            for k in ks:
                metrics[f"recall@{k}/{modality}->report"] = recall_at_k(embedded, reports[rows], k)
    return metrics


def report_perplexity(
    bridge: Bridge, cohort: Cohort, *, shuffle: bool = False, seed: int = 0, batch_size: int = 8
) -> float:
    """Token perplexity of the cohort's reports given each subject's soft prefix.

    ``shuffle=True`` gives every report another subject's prefix (a fixed derangement): if the
    prefix carries the subject's biology, perplexity must rise.
    """
    import torch

    if cohort.reports is None:
        raise DataError("report_perplexity: the cohort has no reports")
    order = np.arange(cohort.n_subjects)
    if shuffle:  # a cyclic derangement: nobody keeps their own prefix
        cycle = np.random.default_rng(seed).permutation(cohort.n_subjects)
        order[cycle] = np.roll(cycle, -1)
    features = {m: torch.from_numpy(np.nan_to_num(x[order])) for m, x in cohort.features.items()}
    present = {m: torch.from_numpy(cohort.present(m)[order]) for m in cohort.features}
    total_nll, total_tokens = 0.0, 0
    bridge.adapters.eval()
    with torch.inference_mode():
        for start in range(0, cohort.n_subjects, batch_size):
            rows = slice(start, start + batch_size)
            nll, tokens = bridge.report_nll(
                {m: x[rows] for m, x in features.items()},
                {m: p[rows] for m, p in present.items()},
                cohort.reports[rows],
            )
            total_nll += float(nll.sum())
            total_tokens += int(tokens.sum())
    return float(np.exp(total_nll / total_tokens))
