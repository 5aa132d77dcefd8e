"""Covariate residualisation: regress age, sex, site ... out of modality vectors.

The field's standard before alignment (so that the bridge learns disease, not scanner): an
ordinary least-squares fit of each feature on the covariates, on the training fold only, whose
covariate part is then subtracted from every subject. Numeric covariates are z-scored with the
training mean and standard deviation; categorical ones are one-hot coded against the first
training level. The intercept is kept, so features keep their training mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import TransformerMixin

from neuroomics_bridge.encoders.base import PersistentEstimator
from neuroomics_bridge.errors import DataError

__all__ = ["Residualizer", "residualize"]


class Residualizer(PersistentEstimator, TransformerMixin):
    """Remove linear covariate effects, fitted on a training fold.

    Parameters
    ----------
    covariates
        Columns to regress out (default: every column of the table given to ``fit``).
    categorical
        Columns to treat as categorical even if numeric (e.g. a site coded 1, 2, 3);
        non-numeric columns are always categorical.
    """

    _fitted_arrays = ("coef_", "numeric_mean_", "numeric_std_")
    _fitted_values = ("numeric_", "levels_")

    def _fitted_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """One mean and scale per numeric covariate; one coefficient row per design column."""
        design = 1 + len(self.numeric_) + sum(len(levels) - 1 for levels in self.levels_.values())
        return {"numeric_mean_": (len(self.numeric_),), "numeric_std_": (len(self.numeric_),), "coef_": (design, None)}

    def __init__(self, covariates: Sequence[str] | None = None, *, categorical: Sequence[str] = ()) -> None:
        self.covariates = covariates
        self.categorical = categorical

    def fit(self, X: np.ndarray, covariates: pd.DataFrame) -> Self:
        """Fit each feature of ``X`` on the covariates by ordinary least squares.

        Parameters
        ----------
        X
            ``(n_subjects, d)`` features of the training fold.
        covariates
            One row per subject of ``X``; the columns used must have no missing values.

        Raises
        ------
        DataError
            When ``covariates`` is not a DataFrame, lacks a column, has another number of rows
            or missing values, has no rows, or a column holds numbers mixed with text.
        """
        table = self._checked(X, covariates, list(self.covariates or covariates.columns))
        if len(table) == 0:
            raise DataError("Residualizer.fit: no subjects to fit on (0 rows)")
        categorical = set(self.categorical)
        for column in table.columns.difference(list(categorical)):
            _refuse_numbers_mixed_with_text(table[column])
        self.numeric_ = [c for c in table.columns if c not in categorical and pd.api.types.is_numeric_dtype(table[c])]
        self.levels_ = {c: sorted(table[c].astype(str).unique()) for c in table.columns if c not in self.numeric_}
        numeric = table[self.numeric_].to_numpy(np.float64)
        self.numeric_mean_ = numeric.mean(axis=0)
        std = numeric.std(axis=0)
        self.numeric_std_ = np.where(std > 0, std, 1.0)
        design = self._design(table)
        self.coef_, *_ = np.linalg.lstsq(design, np.asarray(X, np.float64), rcond=None)
        return self

    def transform(self, X: np.ndarray, covariates: pd.DataFrame) -> np.ndarray:
        """``X`` minus its fitted covariate part (the intercept is kept).

        Returns
        -------
        numpy.ndarray
            ``(n_subjects, d)`` float32.

        Raises
        ------
        DataError
            As in :meth:`fit`, for a categorical level not seen in ``fit``, text in a column fitted
            as numeric, or ``X`` with another number of features than in ``fit``.
        """
        self._check_fitted()
        table = self._checked(X, covariates, self.numeric_ + list(self.levels_))
        if np.ndim(X) != 2 or np.shape(X)[1] != self.coef_.shape[1]:
            raise DataError(
                f"Residualizer: expected X with {self.coef_.shape[1]} feature columns (as fitted), got {np.shape(X)}"
            )
        design = self._design(table)
        return (np.asarray(X, np.float64) - design[:, 1:] @ self.coef_[1:]).astype(np.float32)

    def fit_transform(self, X: np.ndarray, covariates: pd.DataFrame, **kwargs: Any) -> np.ndarray:
        """Fit on ``X`` and return its residuals (:meth:`fit`, then :meth:`transform`)."""
        return self.fit(X, covariates).transform(X, covariates)

    def _checked(self, X: np.ndarray, covariates: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        if not isinstance(covariates, pd.DataFrame):
            raise DataError(f"covariates: expected a pandas DataFrame, got {type(covariates).__name__}")
        absent = [c for c in columns if c not in covariates.columns]
        if absent:
            raise DataError(f"covariates: column(s) {absent} not found; available: {list(covariates.columns)}")
        if len(covariates) != len(X):
            raise DataError(f"covariates has {len(covariates)} rows while X has {len(X)}")
        table = covariates[columns]
        for column in columns:
            missing = table[column].isna()
            if missing.any():
                rows = list(table.index[missing][:5])
                raise DataError(
                    f"covariates['{column}'] has {int(missing.sum())} missing value(s) (rows {rows}); impute or drop "
                    "those subjects before residualising"
                )
        return table

    def _design(self, table: pd.DataFrame) -> np.ndarray:
        blocks = [np.ones((len(table), 1))]
        if self.numeric_:
            numeric = table[self.numeric_].apply(pd.to_numeric, errors="coerce")
            for column in self.numeric_:
                text = table[column][numeric[column].isna()]
                if len(text):
                    raise DataError(
                        f"covariates['{column}'] was numeric in fit but holds {text.iloc[0]!r} "
                        f"({len(text)} such value(s)); expected numbers"
                    )
            blocks.append((numeric.to_numpy(np.float64) - self.numeric_mean_) / self.numeric_std_)
        for column, levels in self.levels_.items():
            values = table[column].astype(str)
            unseen = sorted(set(values) - set(levels))
            if unseen:
                raise DataError(
                    f"covariates['{column}'] has level(s) {unseen[:5]} not seen in fit (known: {levels[:10]})"
                )
            # one indicator column per level after the first (a single level, such as a one-site
            # study's site, adds none: the intercept holds it)
            blocks.append((values.to_numpy()[:, None] == np.asarray(levels[1:], dtype=object)).astype(np.float64))
        return np.concatenate(blocks, axis=1)


def residualize(
    X: np.ndarray, covariates: pd.DataFrame, *, fit_on: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """Residualise every row of ``X`` with a :class:`Residualizer` fitted on some rows only.

    Parameters
    ----------
    X
        ``(n_subjects, d)`` features.
    covariates
        One row per subject of ``X``; every column is regressed out.
    fit_on
        The training rows, as indices or a boolean mask (default: all rows).

    Returns
    -------
    numpy.ndarray
        ``(n_subjects, d)`` float32 residuals.
    """
    rows = np.arange(len(X)) if fit_on is None else np.asarray(fit_on)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    residualizer = Residualizer().fit(np.asarray(X)[rows], covariates.iloc[rows])
    return residualizer.transform(X, covariates)


def _refuse_numbers_mixed_with_text(column: pd.Series) -> None:
    """:class:`DataError` for a text column whose values are numbers but for a few (``"unknown"``
    among ages): taken as categorical, each age would be its own level and residualising would
    flatten every subject. A column of codes that all read as numbers (``"01"``, ``"02"``) stays
    categorical, as given, and so does a pandas categorical column, whatever its levels."""
    if pd.api.types.is_numeric_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype):
        return
    numbers = pd.to_numeric(column, errors="coerce")
    text = column[numbers.isna()]
    if numbers.notna().sum() > len(text) > 0:
        raise DataError(
            f"covariates['{column.name}'] holds numbers and {len(text)} text value(s) such as {text.iloc[0]!r}; "
            "expected numbers only (impute or drop those subjects), or, for codes, a categorical column "
            "(.astype('category'), or categorical= here)"
        )
