"""Metrics for retrieval, zero-shot classification, generated reports and medical benchmarks.

Classification metrics come from scikit-learn, ROUGE from torchmetrics; retrieval recall is
computed on cosine similarities of paired rows (row i of the queries belongs with row i of the
keys). Benchmark answers are compared after :func:`normalize_answer` (case, spacing, a final
full stop).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np

from neuroomics_bridge.errors import DataError

if TYPE_CHECKING:
    from neuroomics_bridge.reports.report import Report

__all__ = [
    "recall_at_k",
    "zero_shot_accuracy",
    "classification_metrics",
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

    Chance level is ``k / n``. Ties count in the query's favour: only keys strictly more similar
    than its own push it down the ranking.

    Parameters
    ----------
    queries, keys
        ``(n, d)`` each, paired row by row; compared by cosine similarity.
    k
        How many of the most similar keys count.

    Raises
    ------
    DataError
        When the shapes differ or a matrix is not finite and 2D.
    """
    queries, keys = _unit(queries, "queries"), _unit(keys, "keys")
    if queries.shape != keys.shape:
        raise DataError(f"recall_at_k: queries {queries.shape} and keys {keys.shape} must be paired row by row")
    similarity = queries @ keys.T
    own = np.diag(similarity)
    rank = (similarity > own[:, None]).sum(axis=1)
    return float((rank < k).mean())


def zero_shot_accuracy(probabilities: np.ndarray, labels: Sequence[str], classes: Sequence[str]) -> float:
    """Accuracy of ``argmax`` over ``classes`` against the true ``labels``.

    ``probabilities`` is ``(n_subjects, n_classes)``; see :func:`classification_metrics`.
    """
    return classification_metrics(probabilities, labels, classes)["accuracy"]


def classification_metrics(
    probabilities: np.ndarray, labels: Sequence[str], classes: Sequence[str]
) -> dict[str, float]:
    """Accuracy, macro-F1 and one-vs-rest macro AUROC (CellWhisperer's zero-shot protocol).

    Parameters
    ----------
    probabilities
        ``(n_subjects, n_classes)`` scores, columns in ``classes`` order.
    labels
        The true class of each subject; each must be one of ``classes``.
    classes
        The candidate classes.

    Returns
    -------
    dict
        ``accuracy`` and ``macro_f1`` (over every class), and ``auroc`` when at least two classes
        occur in ``labels`` (scores renormalised over those classes).

    Raises
    ------
    DataError
        For no subjects, a wrong ``probabilities`` shape, scores that are not finite or a label
        outside ``classes``.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = list(classes)
    if not len(labels):
        raise DataError("labels: expected at least one subject to score, got none")
    if probabilities.shape != (len(labels), len(classes)):
        raise DataError(f"probabilities: expected shape ({len(labels)}, {len(classes)}), got {probabilities.shape}")
    if not np.isfinite(probabilities).all():
        bad = sorted({int(r) for r in np.flatnonzero(~np.isfinite(probabilities).all(axis=1))})
        raise DataError(f"probabilities: expected finite scores; rows {bad[:10]} are not")
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


def report_label_accuracy(reports: Sequence[Report], labels: Sequence[str]) -> float:
    """Fraction of reports whose impression names the true label; unparseable counts as wrong.

    Raises
    ------
    DataError
        When ``reports`` and ``labels`` differ in length.
    """
    if len(reports) != len(labels):
        raise DataError(f"report_label_accuracy: {len(reports)} reports but {len(labels)} labels")
    return float(np.mean([report.label == label for report, label in zip(reports, labels, strict=True)]))


def rouge_l(generated: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence) of generated texts against references.

    Raises
    ------
    DataError
        When the two lists differ in length.
    """
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
    """Macro-F1 over the ``labels`` that occur in ``truth`` or ``predicted``; ``None`` (unparseable) is wrong.

    A label neither true nor predicted for any item has no F1 (sklearn's own default leaves it
    out too): counting it as 0 would give a perfect run on a subset (``--limit``) less than 1.

    Raises
    ------
    DataError
        When ``predicted`` and ``truth`` differ in length.
    """
    from sklearn.metrics import f1_score

    if len(predicted) != len(truth):
        raise DataError(f"macro_f1: {len(predicted)} predictions but {len(truth)} answers")
    outside = "\0unparseable"
    guesses = [outside if p is None else p for p in predicted]
    seen = set(truth) | set(guesses)
    scored = [label for label in labels if label in seen]
    if not scored:  # every answer outside the labels, and every prediction unparseable
        return 0.0
    return float(f1_score(truth, guesses, labels=scored, average="macro", zero_division=0))


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

    Returns
    -------
    dict
        ``precision``, ``recall`` and ``f1`` (0.0 where undefined).

    Raises
    ------
    DataError
        When ``predicted`` and ``truth`` differ in length.
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
    """Macro- and micro-F1 of label sets over the fixed ``labels`` (HoC's protocol).

    Labels outside ``labels`` are ignored, in predictions and answers alike; the macro average
    leaves out a label neither true nor predicted for any item (as :func:`macro_f1` does).

    Returns
    -------
    dict
        ``macro_f1`` and ``micro_f1``.

    Raises
    ------
    DataError
        When ``predicted`` and ``truth`` differ in length.
    """
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    if len(predicted) != len(truth):
        raise DataError(f"multilabel_f1: {len(predicted)} predictions but {len(truth)} answers")
    binarizer = MultiLabelBinarizer(classes=list(labels))
    binarizer.fit([])
    known = set(labels)
    guesses = binarizer.transform([set(p) & known for p in predicted])
    gold = binarizer.transform([set(t) & known for t in truth])
    seen = (gold.sum(axis=0) + guesses.sum(axis=0)) > 0
    macro = float(f1_score(gold[:, seen], guesses[:, seen], average="macro", zero_division=0)) if seen.any() else 0.0
    return {"macro_f1": macro, "micro_f1": float(f1_score(gold, guesses, average="micro", zero_division=0))}
