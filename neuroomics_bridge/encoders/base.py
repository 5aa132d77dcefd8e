"""What every encoder shares: scikit-learn's estimator protocol and pickle-free persistence.

An encoder's constructor arguments are its parameters (``get_params`` works); what ``fit``
learns ends in ``_``. ``save`` writes parameters and fitted state into one safetensors file:
arrays as tensors, everything else as JSON in its header, so loading runs no code.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Self

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from neuroomics_bridge.errors import CorruptFileError, DataError
from neuroomics_bridge.io import read_arrays, write_arrays

__all__ = ["PersistentEstimator", "FORMAT", "cohort_genes", "cohort_images"]

FORMAT = "neuroomics-bridge/estimator-v1"


class PersistentEstimator(BaseEstimator):
    """Base class adding ``save`` / ``load`` to a scikit-learn style estimator.

    Subclasses list their fitted numpy attributes in ``_fitted_arrays`` and their fitted
    JSON-able attributes in ``_fitted_values``.
    """

    _fitted_arrays: ClassVar[tuple[str, ...]] = ()
    _fitted_values: ClassVar[tuple[str, ...]] = ()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted estimator to ``path`` (safetensors), atomically.

        Raises
        ------
        DataError
            When the estimator is not fitted yet.
        """
        self._check_fitted()
        arrays = {name: np.asarray(getattr(self, name)) for name in self._fitted_arrays}
        metadata = {
            "format": FORMAT,
            "class": type(self).__name__,
            "params": self._params_to_json(),
            "fitted": {name: getattr(self, name) for name in self._fitted_values},
        }
        write_arrays(path, arrays, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read an estimator written by :meth:`save`; refuses files of another class.

        Raises
        ------
        CorruptFileError
            When the file is not a saved estimator of this class or lacks its fitted arrays.
        """
        arrays, metadata = read_arrays(path)
        if metadata.get("format") != FORMAT or metadata.get("class") != cls.__name__:
            raise CorruptFileError(
                f"{path}: expected a saved {cls.__name__} ({FORMAT}), found "
                f"{metadata.get('class', 'no class')} ({metadata.get('format', 'no format')})"
            )
        missing = [name for name in cls._fitted_arrays if name not in arrays]
        if missing:
            raise CorruptFileError(f"{path}: saved {cls.__name__} lacks arrays {missing}")
        if not isinstance(metadata.get("params"), dict) or not isinstance(metadata.get("fitted"), dict):
            raise CorruptFileError(f"{path}: expected 'params' and 'fitted' objects in its metadata")
        try:
            estimator = cls(**cls._params_from_json(metadata["params"], arrays))
        except TypeError as err:  # a parameter this version does not have (a file from another version)
            raise CorruptFileError(
                f"{path}: parameters {sorted(metadata['params'])} do not fit {cls.__name__} ({err})"
            ) from None
        for name in cls._fitted_arrays:
            setattr(estimator, name, arrays[name])
        for name, value in metadata["fitted"].items():
            setattr(estimator, name, value)
        for name, expected in estimator._fitted_shapes().items():  # a tensor cut or swapped fails here, by name
            actual = np.shape(getattr(estimator, name))
            if len(actual) != len(expected) or any(e not in (None, a) for e, a in zip(expected, actual, strict=True)):
                wanted = tuple("k" if e is None else e for e in expected)
                raise CorruptFileError(f"{path}: {name}: expected shape {wanted}, got {actual}")
        return estimator

    def _fitted_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """The shape each fitted array must have, given the fitted values (``None``: any size);
        checked at :meth:`load`."""
        return {}

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, list(self._fitted_arrays) or None)
        except NotFittedError:
            raise DataError(f"this {type(self).__name__} is not fitted yet: call fit() first") from None

    def _params_to_json(self) -> dict[str, Any]:
        return self.get_params(deep=False)

    @classmethod
    def _params_from_json(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        return {key: tuple(value) if isinstance(value, list) else value for key, value in params.items()}


def cohort_genes(cohort: Any, modality: str) -> Any:
    """A cohort's expression AnnData (``cohort.genes``).

    Raises
    ------
    DataError
        When the cohort has no expression data; the message names ``modality``.
    """
    if cohort.genes is None:
        raise DataError(f"modality {modality!r}: this cohort has no expression data (genes.h5ad)")
    return cohort.genes


def cohort_images(cohort: Any, modality: str) -> list[tuple[str, Any]]:
    """``(subject id, image)`` for each subject of a cohort that has a brain image.

    Raises
    ------
    DataError
        When the cohort has no brain images at all; the message names ``modality``.
    """
    if cohort.brains is None:
        raise DataError(f"modality {modality!r}: this cohort has no brain images (brain/<subject>.nii.gz)")
    return [(s, image) for s, image in zip(cohort.subject_ids, cohort.brains, strict=True) if image is not None]
