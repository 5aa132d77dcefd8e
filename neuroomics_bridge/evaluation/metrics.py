"""Metrics for retrieval, zero-shot classification, generated reports and medical benchmarks.

Classification metrics come from scikit-learn, ROUGE from torchmetrics; retrieval recall is
computed on cosine similarities of paired rows (row i of the queries belongs with row i of the
keys). Benchmark answers are compared after :func:`normalize_answer` (case, spacing, a final
full stop).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from neuroomics_bridge.errors import DataError

if TYPE_CHECKING:
    from neuroomics_bridge.bridge import Bridge
    from neuroomics_bridge.data.cohort import Cohort
    from neuroomics_bridge.reports import Report

__all__ = [
    "recall_at_k",
    "zero_shot_accuracy",
    "classification_metrics",
    "evaluate_bridge",
    "report_perplexity",
    "report_label_accuracy",
    "rouge_l",
    "normalize_answer",
    "accuracy_stderr",
    "macro_f1",
    "set_f1",
    "entity_f1",
    "multilabel_f1",
]


def recall_at_k(queries: np.ndarray, keys: np.ndarray, k: int = 5) -> float:
    """Fraction of queries whose own key (same row) is among their ``k`` most similar keys.

    Chance level is ``k / n``. Ties count against the query (its key must rank strictly within
    the top ``k``).
    """
    queries, keys = _unit(queries, "queries"), _unit(keys, "keys")
    if queries.shape != keys.shape:
        raise DataError(f"recall_at_k: queries {queries.shape} and keys {keys.shape} must be paired row by row")
    similarity = queries @ keys.T
    own = np.diag(similarity)
    rank = (similarity > own[:, None]).sum(axis=1)
    return float((rank < k).mean())


def zero_shot_accuracy(probabilities: np.ndarray, labels: Sequence[str], classes: Sequence[str]) -> float:
    """Accuracy of ``argmax`` over ``classes`` against the true ``labels``."""
    return classification_metrics(probabilities, labels, classes)["accuracy"]


def classification_metrics(
    probabilities: np.ndarray, labels: Sequence[str], classes: Sequence[str]
) -> dict[str, float]:
    """Accuracy, macro-F1 and one-vs-rest macro AUROC (CellWhisperer's zero-shot protocol)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = list(classes)
    if probabilities.shape != (len(labels), len(classes)):
        raise DataError(f"probabilities: expected shape ({len(labels)}, {len(classes)}), got {probabilities.shape}")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not among the classes {classes}")
    truth = np.array([classes.index(label) for label in labels])
    predicted = probabilities.argmax(axis=1)
    metrics = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", labels=range(len(classes)), zero_division=0)),
    }
    present = np.unique(truth)
    if len(present) > 1:
        scores = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        if len(present) == 2:
            metrics["auroc"] = float(roc_auc_score(truth == present[1], scores[:, 1]))
        else:
            metrics["auroc"] = float(roc_auc_score(truth, scores, multi_class="ovr", labels=present))
    return metrics


def _unit(matrix: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or not np.isfinite(matrix).all():
        raise DataError(f"{name}: expected a finite (n, d) matrix, got shape {matrix.shape}")
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-12)


def evaluate_bridge(
    bridge: Bridge,
    cohort: Cohort,
    *,
    stage: str = "contrastive",
    class_prompt: str | Mapping[str, str] = "Impression: {label}.",
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


def report_label_accuracy(reports: Sequence[Report], labels: Sequence[str]) -> float:
    """Fraction of reports whose impression names the true label; unparseable counts as wrong."""
    if len(reports) != len(labels):
        raise DataError(f"report_label_accuracy: {len(reports)} reports but {len(labels)} labels")
    return float(np.mean([report.label == label for report, label in zip(reports, labels, strict=True)]))


def rouge_l(generated: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence) of generated texts against references."""
    from torchmetrics.functional.text.rouge import rouge_score

    if len(generated) != len(references):
        raise DataError(f"rouge_l: {len(generated)} texts but {len(references)} references")
    scores = [
        float(rouge_score(g, r, rouge_keys="rougeL")["rougeL_fmeasure"])
        for g, r in zip(generated, references, strict=True)
    ]
    return float(np.mean(scores))


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding space or final full stop: how answers are compared."""
    return " ".join(text.lower().strip().rstrip(".").split())


def accuracy_stderr(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` items (lm-eval reports the same)."""
    return float(np.sqrt(accuracy * (1 - accuracy) / (n - 1))) if n > 1 else float("nan")


def macro_f1(predicted: Sequence[str | None], truth: Sequence[str], labels: Sequence[str]) -> float:
    """Macro-F1 over ``labels`` (every label counts, present or not); ``None`` (unparseable) is wrong."""
    from sklearn.metrics import f1_score

    if len(predicted) != len(truth):
        raise DataError(f"macro_f1: {len(predicted)} predictions but {len(truth)} answers")
    outside = "\0unparseable"
    guesses = [outside if p is None else p for p in predicted]
    return float(f1_score(truth, guesses, labels=list(labels), average="macro", zero_division=0))


def set_f1(answer: str, expected: str) -> float:
    """F1 between the sets of normalised non-empty lines of two texts (1.0 when both are empty)."""
    found = {normalize_answer(line) for line in answer.splitlines() if line.strip()}
    truth = {normalize_answer(line) for line in expected.splitlines() if line.strip()}
    if not found or not truth:
        return float(found == truth)
    overlap = len(found & truth)
    return 0.0 if overlap == 0 else 2 * overlap / (len(found) + len(truth))


def entity_f1(predicted: Sequence[Collection[str]], truth: Sequence[Collection[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1, micro-averaged over the corpus (CoNLL style).

    Each item is a set of entities (e.g. ``"disease: parkinson's disease"``); an entity counts
    as found only if type and whole span match. An item's duplicates count once.
    """
    if len(predicted) != len(truth):
        raise DataError(f"entity_f1: {len(predicted)} predictions but {len(truth)} answers")
    hits = found = expected = 0
    for guess, gold in zip(predicted, truth, strict=True):
        guess, gold = set(guess), set(gold)
        hits, found, expected = hits + len(guess & gold), found + len(guess), expected + len(gold)
    precision = hits / found if found else 0.0
    recall = hits / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def multilabel_f1(
    predicted: Sequence[Collection[str]], truth: Sequence[Collection[str]], labels: Sequence[str]
) -> dict[str, float]:
    """Macro- and micro-F1 of label sets over the fixed ``labels`` (HoC's protocol)."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    if len(predicted) != len(truth):
        raise DataError(f"multilabel_f1: {len(predicted)} predictions but {len(truth)} answers")
    binarizer = MultiLabelBinarizer(classes=list(labels))
    binarizer.fit([])
    known = set(labels)
    guesses = binarizer.transform([set(p) & known for p in predicted])
    gold = binarizer.transform([set(t) & known for t in truth])
    return {
        average + "_f1": float(f1_score(gold, guesses, average=average, zero_division=0))
        for average in ("macro", "micro")
    }
