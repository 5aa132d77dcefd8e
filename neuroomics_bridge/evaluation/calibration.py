"""Calibration of zero-shot probabilities: temperature scaling, expected calibration error, reliability.

Zero-shot probabilities are quoted in reports as evidence ("Parkinson's disease 0.62"), so they
should mean what they say. Temperature scaling (Guo et al. 2017) divides the logits by one scalar
fitted to minimise the negative log-likelihood on a validation fold; it changes no ranking, so
accuracy stays as it was. Expected calibration error (ECE) bins the test predictions by their
confidence (the top probability) into equal-width bins and averages ``|accuracy - confidence|``
over the bins, weighted by their share of predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuroomics_bridge.errors import DataError

__all__ = ["expected_calibration_error", "fit_temperature", "reliability_bins", "with_temperature"]

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
