"""PrecomputedEncoder: embeddings made elsewhere (gene or brain foundation models), by subject id.

Reads ``.npy`` (ids given separately), ``.parquet`` / ``.csv`` (an id column plus numeric
feature columns) or an AnnData ``obsm`` key (ids from ``obs_names`` or an ``obs`` column), and
looks rows up by subject id, so the embedding file's row order never matters.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from neuroomics_bridge.errors import CorruptFileError, DataError, MissingFileError

__all__ = ["PrecomputedEncoder"]

Missing = Literal["error", "nan"]


class PrecomputedEncoder(BaseEstimator, TransformerMixin):
    """Look up precomputed embeddings by subject id.

    Parameters
    ----------
    source
        A ``.npy``, ``.parquet``, ``.csv`` or ``.h5ad`` path, an AnnData, or a DataFrame (indexed
        by subject id, or with an id column).
    key
        The ``obsm`` key for AnnData sources.
    id_column
        Column holding subject ids (tables: default ``"subject_id"``, as a column or as the index
        a table was written with, else the first column unless it holds decimals; a DataFrame
        without that column: its index; AnnData: an ``obs`` column, default ``obs_names``).
    ids
        Row ids for ``.npy`` sources (default ``"0"``, ``"1"``, ...).
    missing
        ``"error"`` (default) refuses unknown subject ids; ``"nan"`` returns NaN rows for them, so
        a :class:`Cohort` marks that modality absent for those subjects.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Any,
        *,
        key: str | None = None,
        id_column: str | None = None,
        ids: Sequence[str] | None = None,
        missing: Missing = "error",
    ) -> None:
        self.source = source
        self.key = key
        self.id_column = id_column
        self.ids = ids
        self.missing = missing

    # ------------------------------------------------------------------------------ cohort protocol
    def fit_cohort(self, cohort: Any, subject_ids: Collection[str], *, modality: str = "") -> Self:
        """Read the table; subjects of the cohort it lacks become NaN rows (``missing="nan"``).

        ``cohort``, ``subject_ids`` and ``modality`` are accepted for the cohort protocol and unused.
        """
        return self.set_params(missing="nan").fit()

    def transform_cohort(self, cohort: Any, *, modality: str = "") -> np.ndarray:
        """The embedding rows of ``cohort.subject_ids``, in cohort order.

        Returns
        -------
        numpy.ndarray
            ``(n_subjects, d)`` float32; NaN rows for subjects the table lacks when
            ``missing="nan"`` (as :meth:`fit_cohort` sets).
        """
        return self.transform(cohort.subject_ids)

    def fit(self, subject_ids: Sequence[str] | None = None, y: Any = None) -> Self:
        """Load and validate the embedding table (nothing is learned; the arguments are unused).

        Raises
        ------
        MissingFileError
            When the source path does not exist.
        CorruptFileError
            When the file cannot be read.
        DataError
            On an unsupported source, a missing id column or ``obsm`` key, non-numeric features,
            duplicated ids, a shape that does not match the ids, or NaN/infinite values.
        """
        ids, values = self._load()
        if len(set(ids)) != len(ids):
            duplicated = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
            raise DataError(f"{self._describe()}: duplicated subject id(s) {list(duplicated[:10])}")
        if values.ndim != 2 or values.shape[0] != len(ids):
            raise DataError(
                f"{self._describe()}: expected a (n_subjects, d) matrix for {len(ids)} ids, got {values.shape}"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise DataError(
                f"{self._describe()}: {int(bad.sum())} NaN/infinite value(s), first for subject {ids[row]!r}"
            )
        self.ids_ = [str(i) for i in ids]
        self.embeddings_ = values.astype(np.float32)
        self.n_features_out_ = values.shape[1]
        return self

    def transform(self, subject_ids: Sequence[str]) -> np.ndarray:
        """The embedding rows of ``subject_ids``, in the order asked for (fits first if needed).

        Returns
        -------
        numpy.ndarray
            ``(len(subject_ids), d)`` float32; unknown ids give NaN rows under ``missing="nan"``.

        Raises
        ------
        DataError
            For unknown ids under ``missing="error"``.
        """
        if not hasattr(self, "embeddings_"):
            self.fit()
        row = {subject: i for i, subject in enumerate(self.ids_)}
        wanted = [str(s) for s in subject_ids]
        unknown = [s for s in wanted if s not in row]
        if unknown and self.missing == "error":
            raise DataError(f"{self._describe()}: no embedding for {len(unknown)} subject(s), e.g. {unknown[:5]}")
        out = np.full((len(wanted), self.n_features_out_), np.nan, dtype=np.float32)
        known = [i for i, s in enumerate(wanted) if s in row]
        out[known] = self.embeddings_[[row[wanted[i]] for i in known]]
        return out

    def _describe(self) -> str:
        return str(self.source) if isinstance(self.source, (str, os.PathLike)) else type(self.source).__name__

    def _load(self) -> tuple[list[str], np.ndarray]:
        import anndata as ad

        source = self.source
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise MissingFileError(f"{path}: no such embedding file")
            suffix = path.suffix.lower()
            if suffix == ".npy":
                values = _read(path, lambda: np.load(path, allow_pickle=False))
                ids = list(self.ids) if self.ids is not None else [str(i) for i in range(len(values))]
                return ids, np.asarray(values, dtype=np.float64)
            if suffix == ".parquet":
                return self._from_table(_read(path, lambda: pd.read_parquet(path)))
            if suffix == ".csv":  # ids as text: "001" must not become the number 1
                header = _read(path, lambda: pd.read_csv(path, nrows=0)).columns
                column = self._id_column(header)
                return self._from_table(_read(path, lambda: pd.read_csv(path, dtype={column: str})))
            if suffix == ".h5ad":
                return self._from_anndata(_read(path, lambda: ad.read_h5ad(path)))
            raise DataError(f"{path}: expected .npy, .parquet, .csv or .h5ad, got {suffix!r}")
        if isinstance(source, ad.AnnData):
            return self._from_anndata(source)
        if isinstance(source, pd.DataFrame):
            if self.id_column is not None or "subject_id" in source.columns:
                return self._from_table(source)
            _check_numeric(source, self._describe())
            return [str(i) for i in source.index], source.to_numpy(dtype=np.float64)
        raise DataError(
            f"PrecomputedEncoder.source: expected a path, AnnData or DataFrame, got {type(source).__name__}"
        )

    def _id_column(self, columns: pd.Index) -> str:
        """The column of a table's subject ids: as given, else ``subject_id``, else the first."""
        return self.id_column or ("subject_id" if "subject_id" in columns else columns[0])

    def _from_table(self, table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        named = self.id_column or "subject_id"
        if named not in table.columns and table.index.name == named:  # written with its index (pandas' default)
            table = table.reset_index()
        column = self._id_column(table.columns)
        if column not in table.columns:
            raise DataError(f"{self._describe()}: id column {column!r} not found; columns: {list(table.columns)[:10]}")
        if column != named and pd.api.types.is_float_dtype(table[column]):
            raise DataError(
                f"{self._describe()}: no {named!r} column, and the first column {column!r} holds decimals, not "
                f"subject ids; name the id column with id_column= (columns: {list(table.columns)[:10]})"
            )
        features = table.drop(columns=[column])
        _check_numeric(features, self._describe())
        return table[column].astype(str).tolist(), features.to_numpy(dtype=np.float64)

    def _from_anndata(self, adata: Any) -> tuple[list[str], np.ndarray]:
        if self.key is None or self.key not in adata.obsm:
            raise DataError(f"{self._describe()}: obsm key {self.key!r} not found; available: {list(adata.obsm)}")
        if self.id_column is None:
            ids = [str(i) for i in adata.obs_names]
        elif self.id_column in adata.obs:
            ids = adata.obs[self.id_column].astype(str).tolist()
        else:
            raise DataError(f"{self._describe()}: obs column {self.id_column!r} not found")
        return ids, np.asarray(adata.obsm[self.key], dtype=np.float64)


def _check_numeric(features: pd.DataFrame, source: str) -> None:
    """:class:`DataError` naming ``source`` and the feature columns that do not hold numbers."""
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise DataError(f"{source}: non-numeric feature column(s) {non_numeric[:5]}")


def _read(path: Path, reader: Any) -> Any:
    try:
        return reader()
    except (OSError, ValueError, EOFError) as err:
        raise CorruptFileError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
