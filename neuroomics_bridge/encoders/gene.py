"""GeneEncoder: expression data (AnnData) in, one vector per cell or per subject out.

Fitting runs scanpy's standard pipeline on the training fold only: ``normalize_total`` and
``log1p`` (raw counts), ``highly_variable_genes`` (Seurat flavour), ``scale`` and ``pca``.
``transform`` applies what was fitted (gene list, scaling, loadings) to new data without
refitting, aligning genes by ``var_names``; cells are pooled to subjects (pseudobulk, via
``scanpy.get.aggregate``) when ``groupby`` names a donor column.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Collection, Sequence
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import TransformerMixin

from neuroomics_bridge.encoders.base import PersistentEstimator, cohort_genes
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.threads import torch_threads_kept

__all__ = ["GeneEncoder", "gene_id_type"]

logger = logging.getLogger(__name__)

GeneInput = Literal["auto", "counts", "log"]
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")


def gene_id_type(names: Sequence[str]) -> Literal["ensembl", "symbol"]:
    """Whether gene names are mostly Ensembl gene IDs (``ENSG00000142192``) or symbols (``APP``).

    Returns
    -------
    str
        ``"ensembl"`` when more than half the names match the Ensembl pattern, else ``"symbol"``.
    """
    hits = sum(bool(_ENSEMBL.match(str(name))) for name in names)
    return "ensembl" if hits > len(names) / 2 else "symbol"


class GeneEncoder(PersistentEstimator, TransformerMixin):
    """Expression profiles to low-dimensional vectors, fitted on a training fold.

    Parameters
    ----------
    n_components
        PCA dimensions of the output (capped by the training data's rank).
    n_top_genes
        Highly variable genes kept (all genes when the data has fewer).
    layer
        Read ``adata.layers[layer]`` instead of ``adata.X``.
    groupby
        ``obs`` column naming each cell's subject (donor); cells are pooled per subject
        (summed counts, or mean log-expression), giving one row per subject in sorted id order.
    input
        ``"counts"`` (raw integer counts: normalised and log-transformed here), ``"log"``
        (already log-normalised: used as is) or ``"auto"`` (integers mean counts).
    target_sum
        Total each row's counts are normalised to (``scanpy.pp.normalize_total``).
    max_value
        Scaled values are clipped to ``[-max_value, max_value]`` (``scanpy.pp.scale``).
    max_missing_fraction
        Above this fraction of encoder genes absent from new data, ``transform`` refuses.
    key_added
        ``obsm`` / ``uns`` key written by ``transform(..., inplace=True)``.
    random_state
        Seed of the PCA.
    """

    _fitted_arrays = ("mean_", "std_", "components_", "pca_mean_")
    _fitted_values = ("genes_", "input_kind_", "id_type_")

    def _fitted_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """One value per selected gene; the components span them."""
        genes = len(self.genes_)
        return {"mean_": (genes,), "std_": (genes,), "pca_mean_": (genes,), "components_": (None, genes)}

    def __init__(
        self,
        n_components: int = 50,
        n_top_genes: int = 2000,
        *,
        layer: str | None = None,
        groupby: str | None = None,
        input: GeneInput = "auto",
        target_sum: float = 1e4,
        max_value: float = 10.0,
        max_missing_fraction: float = 0.1,
        key_added: str = "X_nob_gene",
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.n_top_genes = n_top_genes
        self.layer = layer
        self.groupby = groupby
        self.input = input
        self.target_sum = target_sum
        self.max_value = max_value
        self.max_missing_fraction = max_missing_fraction
        self.key_added = key_added
        self.random_state = random_state

    # ------------------------------------------------------------------------------ fitting

    # ------------------------------------------------------------------------------ cohort protocol
    def fit_cohort(self, cohort: Any, subject_ids: Collection[str], *, modality: str = "gene") -> Self:
        """Fit on the cells of ``subject_ids`` in ``cohort.genes`` (grouped by ``cohort.gene_groupby``)."""
        genes = cohort_genes(cohort, modality)
        self.set_params(groupby=cohort.gene_groupby)
        owners = genes.obs[cohort.gene_groupby].astype(str)
        chosen = owners.isin(set(subject_ids)).to_numpy()
        if not chosen.any():  # else anndata's "0 observations", which names neither the column nor the ids
            raise DataError(
                f"modality {modality!r}: no cells of the {len(subject_ids)} subject(s) to fit on; "
                f"obs['{cohort.gene_groupby}'] holds {sorted(set(owners))[:3]}..., the subjects are "
                f"{sorted(subject_ids)[:3]}..."
            )
        return self.fit(genes[chosen])

    def transform_cohort(self, cohort: Any, *, modality: str = "gene") -> np.ndarray:
        """``(n_subjects, n_components)`` in cohort order; NaN rows for subjects without cells."""
        genes = cohort_genes(cohort, modality)
        return cohort.scatter(self.row_ids(genes), self.transform(genes))

    @torch_threads_kept()
    def fit(self, adata: Any, y: Any = None) -> Self:
        """Learn genes, scaling and loadings from ``adata`` (the training fold only).

        A warning is given when ``n_components`` exceeds what the data supports.

        Parameters
        ----------
        adata
            Cells (or subjects) x genes; pooled to subjects first when ``groupby`` is set.
        y
            Unused (scikit-learn protocol).

        Raises
        ------
        DataError
            On an unknown ``input``, empty data, duplicated gene names, a missing layer or
            ``groupby`` column, non-finite or negative values, non-integer values with
            ``input="counts"``, fewer than 2 rows or genes, or no gene that varies across the rows.
        """
        import anndata as ad
        import scanpy as sc

        if self.input not in ("auto", "counts", "log"):
            raise DataError(f"GeneEncoder.input: expected 'auto', 'counts' or 'log', got {self.input!r}")
        matrix, kind = self._checked_matrix(adata)
        rows, _ = self._pool(adata, matrix, kind)
        work = ad.AnnData(X=rows.copy(), var=pd.DataFrame(index=np.asarray(adata.var_names, dtype=str)))
        if kind == "counts":
            sc.pp.normalize_total(work, target_sum=self.target_sum)
            sc.pp.log1p(work)
        if self.n_top_genes < work.n_vars:
            sc.pp.highly_variable_genes(work, n_top_genes=self.n_top_genes, flavor="seurat")
            work = work[:, work.var["highly_variable"].to_numpy()].copy()
        work.X = work.X.toarray() if sp.issparse(work.X) else np.asarray(work.X)
        varies = np.ptp(work.X, axis=0) > 0
        if not varies.any():
            raise DataError(
                f"GeneEncoder.fit: no gene varies across the {work.n_obs} rows; expected expression that differs "
                "between them (PCA finds no direction in identical rows)"
            )
        with np.errstate(invalid="ignore"):  # scanpy's float32 variance of a constant gene can round below 0
            sc.pp.scale(work, max_value=self.max_value)
        work.X[:, ~varies] = 0.0  # a constant gene scales to 0, never to that rounding's NaN
        n_components = min(self.n_components, work.n_obs - 1, work.n_vars - 1)
        if n_components < 1:
            raise DataError(f"GeneEncoder.fit: need at least 2 rows and 2 genes, got {work.n_obs} x {work.n_vars}")
        if n_components < self.n_components:
            warnings.warn(
                f"GeneEncoder: n_components={self.n_components} exceeds what {work.n_obs} rows x "
                f"{work.n_vars} genes support; using {n_components}",
                stacklevel=2,
            )
        sc.pp.pca(work, n_comps=n_components, random_state=self.random_state)
        self.genes_ = [str(g) for g in work.var_names]
        self.mean_ = work.var["mean"].to_numpy(np.float64)
        self.std_ = np.where(work.var["std"].to_numpy(np.float64) > 0, work.var["std"].to_numpy(np.float64), 1.0)
        self.components_ = np.asarray(work.varm["PCs"], dtype=np.float64).T.copy()
        self.pca_mean_ = np.asarray(work.X, dtype=np.float64).mean(axis=0)
        self.input_kind_ = kind
        self.id_type_ = gene_id_type(self.genes_)
        logger.info("GeneEncoder fitted on %d %s, %s input, gene %ss", work.n_obs, "rows", kind, self.id_type_)
        return self

    def fit_transform(self, adata: Any, y: Any = None, **kwargs: Any) -> np.ndarray:
        """Fit on ``adata`` and embed it (:meth:`fit`, then :meth:`transform` with ``kwargs``)."""
        return self.fit(adata).transform(adata, **kwargs)

    # ------------------------------------------------------------------------------ transforming
    @torch_threads_kept()
    def transform(self, adata: Any, *, inplace: bool = False) -> np.ndarray:
        """Embed ``adata`` with the fitted pipeline, aligning genes by ``var_names``.

        Encoder genes absent from ``adata`` are zero-filled with a warning, up to
        ``max_missing_fraction``.

        Parameters
        ----------
        adata
            Expression data of the same kind (counts or log) and gene identifiers as in ``fit``.
        inplace
            Also write the vectors to ``adata.obsm[key_added]`` (each cell receives its subject's
            vector) and the encoder's parameters to ``adata.uns[key_added]``.

        Returns
        -------
        numpy.ndarray
            ``(n_rows, n_components)`` float32; rows are cells, or subjects in :meth:`row_ids`
            order when ``groupby`` is set.

        Raises
        ------
        DataError
            On invalid data (as in :meth:`fit`), another input kind or gene identifier type than
            fitted, or too many encoder genes missing.
        """
        self._check_fitted()
        matrix, kind = self._checked_matrix(adata)
        if kind != self.input_kind_:
            raise DataError(
                f"{self._key()}: looks like {kind!r} data but the encoder was fitted on {self.input_kind_!r} "
                "data; pass input= or layer= to read matching values"
            )
        id_type = gene_id_type(list(adata.var_names))
        if id_type != self.id_type_:
            raise DataError(
                f"var_names look like {id_type} IDs (e.g. {adata.var_names[0]!r}) but the encoder was fitted on "
                f"{self.id_type_} IDs (e.g. {self.genes_[0]!r}); map gene identifiers before encoding"
            )
        rows, row_ids = self._pool(adata, matrix, kind)
        selected = self._select_genes(rows, [str(g) for g in adata.var_names])
        if kind == "counts":  # per-row normalisation uses every gene's counts, then log1p
            totals = np.asarray(rows.sum(axis=1)).ravel()
            factors = (self.target_sum / np.where(totals > 0, totals, 1.0)).astype(np.float32)
            selected.data *= np.repeat(factors, np.diff(selected.indptr))
            np.log1p(selected.data, out=selected.data)
        f32 = np.float32
        scaled = (selected.toarray() - self.mean_.astype(f32)) / self.std_.astype(f32)
        np.clip(scaled, -self.max_value, self.max_value, out=scaled)
        embedding = (scaled - self.pca_mean_.astype(f32)) @ self.components_.T.astype(f32)
        if inplace:
            self._write(adata, embedding, row_ids)
        return embedding

    def row_ids(self, adata: Any) -> list[str]:
        """Identifiers of :meth:`transform`'s rows: sorted subject ids, or ``obs_names``."""
        if self.groupby is None:
            return [str(name) for name in adata.obs_names]
        return sorted({str(value) for value in self._group_labels(adata)})

    # ------------------------------------------------------------------------------ helpers
    def _key(self) -> str:
        return "X" if self.layer is None else f"layers['{self.layer}']"

    def _checked_matrix(self, adata: Any) -> tuple[sp.csr_matrix, str]:
        """The expression matrix as float32 CSR, validated, and its kind (counts or log)."""
        key = self._key()
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise DataError(f"AnnData is empty: {adata.n_obs} observations x {adata.n_vars} genes")
        duplicated = adata.var_names[adata.var_names.duplicated()].unique()
        if len(duplicated):
            raise DataError(
                f"var_names has {len(duplicated)} duplicated gene(s): {list(duplicated[:10])}; make them unique "
                "(e.g. adata.var_names_make_unique()) or aggregate them first"
            )
        if self.layer is not None and self.layer not in adata.layers:
            raise DataError(f"layers['{self.layer}'] not found; available layers: {list(adata.layers)}")
        source = adata.X if self.layer is None else adata.layers[self.layer]
        if source is None:  # an AnnData of annotations only (obs/var, or its data in layers)
            raise DataError(f"{key} is None: expected an expression matrix; available layers: {list(adata.layers)}")
        matrix = sp.csr_matrix(source, dtype=np.float32)  # may share memory with adata: never modified
        values = matrix.data
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{key} contains {int(bad.sum())} NaN or infinite value(s); expected finite expression")
        if values.size and values.min() < 0:
            raise DataError(
                f"{key} contains negative values (min {values.min():.3g}); expected raw counts or "
                "log-normalised expression, not scaled data (try adata.raw.to_adata() or layer=)"
            )
        integer = bool(np.all(values == np.round(values)))
        kind = self.input if self.input != "auto" else ("counts" if integer else "log")
        if kind == "counts" and not integer:
            raise DataError(f"{key}: input='counts' but the values are not integers (e.g. {values[values % 1 > 0][0]})")
        return matrix, kind

    def _group_labels(self, adata: Any) -> np.ndarray:
        if self.groupby not in adata.obs:
            raise DataError(f"obs['{self.groupby}'] not found (groupby); available columns: {list(adata.obs.columns)}")
        labels = adata.obs[self.groupby]
        if labels.isna().any():
            raise DataError(f"obs['{self.groupby}'] has {int(labels.isna().sum())} missing subject id(s)")
        return labels.astype(str).to_numpy()

    def _pool(self, adata: Any, matrix: sp.csr_matrix, kind: str) -> tuple[sp.csr_matrix, list[str]]:
        """Cells to subjects: summed counts or mean log-expression, via ``scanpy.get.aggregate``."""
        if self.groupby is None:
            return matrix, [str(name) for name in adata.obs_names]
        import anndata as ad
        import scanpy as sc

        labels = self._group_labels(adata)
        cells = ad.AnnData(X=matrix, obs={"subject": labels})
        func = "sum" if kind == "counts" else "mean"
        pooled = sc.get.aggregate(cells, by="subject", func=func)
        order = sorted(set(labels))
        pooled = pooled[order]
        return sp.csr_matrix(pooled.layers[func], dtype=np.float32), order

    def _select_genes(self, rows: sp.csr_matrix, names: list[str]) -> sp.csr_matrix:
        """Columns reordered to the encoder's genes by name; absent genes are all-zero columns."""
        position = {name: i for i, name in enumerate(names)}
        missing = sum(g not in position for g in self.genes_)
        if missing:
            fraction = missing / len(self.genes_)
            message = f"{missing} of {len(self.genes_)} encoder genes ({fraction:.1%}) are absent from the data"
            if fraction > self.max_missing_fraction:
                raise DataError(f"{message}; more than max_missing_fraction={self.max_missing_fraction}")
            warnings.warn(f"{message}; zero-filled", stacklevel=3)
            rows = sp.hstack([rows, sp.csr_matrix((rows.shape[0], 1), dtype=rows.dtype)], format="csr")
        zero_column = len(names)
        return rows[:, [position.get(g, zero_column) for g in self.genes_]]

    def _write(self, adata: Any, embedding: np.ndarray, row_ids: list[str]) -> None:
        if self.groupby is None:
            adata.obsm[self.key_added] = embedding
        else:
            index = {subject: i for i, subject in enumerate(row_ids)}
            adata.obsm[self.key_added] = embedding[[index[s] for s in self._group_labels(adata)]]
        adata.uns[self.key_added] = {
            "params": {k: v for k, v in self.get_params().items() if v is not None},
            "genes": np.asarray(self.genes_),
            "row_ids": np.asarray(row_ids),
        }
