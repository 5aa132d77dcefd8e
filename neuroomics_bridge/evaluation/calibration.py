"""Calibration of zero-shot probabilities: temperature scaling, expected calibration error, reliability.

Zero-shot probabilities are quoted in reports as evidence ("Parkinson's disease 0.62"), so they
should mean what they say. Temperature scaling (Guo et al. 2017) divides the logits by one scalar
fitted to minimise the negative log-likelihood on a validation fold; it changes no ranking, so
accuracy stays as it was. Expected calibration error (ECE) bins the test predictions by their
confidence (the top probability) into equal-width bins and averages ``|accuracy - confidence|``
over the bins, weighted by their share of predictions. On a small test fold ECE is biased
upwards: even a perfectly calibrated model scores above 0 by sampling noise alone, so
:func:`ece_floor` gives that level for the same probabilities and fold size, the baseline an ECE
figure stands beside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuroomics_bridge.errors import DataError

__all__ = ["ece_floor", "expected_calibration_error", "fit_temperature", "reliability_bins", "with_temperature"]

TEMPERATURE_RANGE = (0.05, 20.0)


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row: the probabilities the same logits give at temperature ``T``."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-300, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The temperature that minimises the mean negative log-likelihood of ``labels``.

    Parameters
    ----------
    probabilities
        ``(n, n_classes)`` predicted probabilities (rows sum to 1).
    labels
        ``(n,)`` true class indices.

    Returns
    -------
    float
        ``T`` in ``[0.05, 20]`` (searched on ``log T``): above 1 softens over-confident
        probabilities, below 1 sharpens timid ones.
    """
    from scipy.optimize import minimize_scalar

    p, y = _checked(probabilities, labels, "fit_temperature")
    log_p = np.log(np.clip(p, 1e-300, None))

    def nll(log_t: float) -> float:
        logits = log_p / np.exp(log_t)
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        return float(np.mean(log_norm - logits[np.arange(len(y)), y]))

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def reliability_bins(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (empty bins: NaN, NaN, 0)."""
    p, y = _checked(probabilities, labels, "reliability_bins")
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    # bin i holds confidences in (i / n, (i + 1) / n]; confidence 1/n_classes and above only
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(which, weights=(predicted == y).astype(float), minlength=n_bins) / counts
    return mean_confidence, accuracy, counts


def expected_calibration_error(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, n_bins: int = 10
) -> float:
    """``sum_b (n_b / n) |accuracy_b - confidence_b|`` over ``n_bins`` equal-width confidence bins."""
    confidence, accuracy, counts = reliability_bins(probabilities, labels, n_bins)
    used = counts > 0
    return float(np.sum(counts[used] / counts.sum() * np.abs(accuracy[used] - confidence[used])))


def ece_floor(probabilities: np.ndarray, n_bins: int = 10, *, n_draws: int = 200, seed: int = 0) -> float:
    """The mean ECE a perfectly calibrated model with these probabilities scores on as many samples.

    Each draw takes every row's label from the row's own probabilities (so the model is
    calibrated by construction) and computes :func:`expected_calibration_error`; the mean over
    draws is what sampling noise alone adds on a fold of this size. An ECE near it cannot be told
    apart from perfect calibration on that fold; only the excess is miscalibration.

    Parameters
    ----------
    probabilities
        ``(n, n_classes)`` predicted probabilities (rows sum to 1), e.g. a test fold's.
    n_bins
        As for :func:`expected_calibration_error`.
    n_draws
        Label draws averaged; ``seed`` seeds them.

    Returns
    -------
    float
        The expected ECE of a calibrated model; 0 for one-hot probabilities.
    """
    p, _ = _checked(probabilities, np.zeros(len(probabilities), dtype=int), "ece_floor")
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    scores = []
    for _ in range(n_draws):
        labels = (rng.random((len(p), 1)) > cumulative).sum(axis=1).clip(max=p.shape[1] - 1)
        scores.append(expected_calibration_error(p, labels, n_bins))
    return float(np.mean(scores))


def _checked(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, caller: str
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or len(p) != len(y) or len(p) == 0:
        raise DataError(f"{caller}: expected (n, n_classes) probabilities and n labels, got {p.shape} and {y.shape}")
    if not np.isfinite(p).all():
        raise DataError(f"{caller}: probabilities must be finite (leave absent rows out)")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"{caller}: labels must be class indices in [0, {p.shape[1]}), got {y[:5]}")
    return p, y.astype(int)
