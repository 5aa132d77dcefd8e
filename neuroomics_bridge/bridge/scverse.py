"""AnnData in and out, scverse-style, for :class:`Bridge`'s ``embed``, ``zero_shot`` and
``generate_report``.

Rows of the AnnData are subjects or cells. A modality's vectors are read from ``obsm[use_rep]``
(or ``X`` when ``use_rep="X"``); results land where scanpy users look for them, under
``key_added``: embeddings in ``obsm``, the predicted class in ``obs`` (categorical) beside its
probabilities in ``obsm``, and what produced them in ``uns``. As in scanpy, ``copy=True``
returns a new AnnData with the results and leaves the given one unchanged; otherwise the given
one is written to and ``None`` returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuroomics_bridge.errors import DataError

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["is_anndata", "matrix", "modality_inputs", "rep_keys", "write_embedding", "write_zero_shot"]


def is_anndata(value: object) -> bool:
    """Whether ``value`` is an AnnData (checked without importing anndata for plain arrays)."""
    return type(value).__name__ == "AnnData" and type(value).__module__.startswith("anndata")


def matrix(adata: ad.AnnData, use_rep: str, *, modality: str) -> np.ndarray:
    """``obsm[use_rep]`` (or ``X`` for ``"X"``) as a dense float32 array, one row per observation."""
    if use_rep == "X":
        X = adata.X
    elif use_rep in adata.obsm:
        X = adata.obsm[use_rep]
    else:
        raise DataError(
            f"AnnData for modality {modality!r}: expected obsm[{use_rep!r}] (or use_rep='X'); "
            f"obsm has {sorted(adata.obsm)}"
        )
    if X is None:
        raise DataError(f"AnnData for modality {modality!r}: X is empty; name an obsm key with use_rep=")
    dense = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    return dense.astype(np.float32, copy=False)


def modality_inputs(
    adata: ad.AnnData, modalities: Sequence[str], use_rep: str | Mapping[str, str] | None
) -> dict[str, np.ndarray]:
    """Each bridge modality's vectors from one AnnData (where :func:`rep_keys` says)."""
    return {m: matrix(adata, key, modality=m) for m, key in rep_keys(adata, modalities, use_rep).items()}


def rep_keys(adata: ad.AnnData, modalities: Sequence[str], use_rep: str | Mapping[str, str] | None) -> dict[str, str]:
    """Where each modality's vectors are: modality -> obsm key, or ``"X"``.

    ``use_rep`` maps modality -> key (a plain key serves a one-modality call); by default
    modality ``m`` is read from ``obsm[m]`` or ``obsm["X_" + m]`` where either exists, and a
    one-modality call falls back to ``X``. A modality left out is absent for every row.
    """
    chosen = dict(use_rep) if isinstance(use_rep, Mapping) else {}
    if isinstance(use_rep, str):
        if len(modalities) != 1:
            raise DataError(
                f"use_rep={use_rep!r} names one matrix but the bridge has modalities {list(modalities)}; "
                "pass a mapping modality -> obsm key"
            )
        chosen = {modalities[0]: use_rep}
    unknown = sorted(set(chosen) - set(modalities))
    if unknown:
        raise DataError(f"use_rep names unknown modalities {unknown}; the bridge has {list(modalities)}")
    for modality in modalities:
        if modality not in chosen:
            found = [key for key in (modality, f"X_{modality}") if key in adata.obsm]
            if found:
                chosen[modality] = found[0]
            elif len(modalities) == 1:
                chosen[modality] = "X"
    if not chosen:
        raise DataError(
            f"AnnData: no vectors for any of the bridge's modalities {list(modalities)}; "
            f"obsm has {sorted(adata.obsm)}; pass use_rep="
        )
    return chosen


def write_embedding(
    adata: ad.AnnData, embedding: np.ndarray, *, key: str, params: dict[str, Any], copy: bool
) -> ad.AnnData | None:
    """``obsm[key]`` = the embedding and ``uns[key]`` = ``params``, in place or on a copy."""
    target = adata.copy() if copy else adata
    target.obsm[key] = embedding
    target.uns[key] = params
    return target if copy else None


def write_zero_shot(
    adata: ad.AnnData,
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    key: str,
    params: dict[str, Any],
    copy: bool,
) -> ad.AnnData | None:
    """``obs[key]`` = the most probable class (categorical; missing for absent rows),
    ``obsm[key + "_probabilities"]`` = the probabilities (columns in ``uns[key]["classes"]``)."""
    target = adata.copy() if copy else adata
    absent = np.isnan(probabilities).all(axis=1)
    best = np.where(absent, 0, np.nanargmax(np.where(np.isnan(probabilities), -np.inf, probabilities), axis=1))
    names = np.asarray(list(classes), dtype=object)[best]
    names[absent] = None
    target.obs[key] = pd.Categorical(names, categories=list(dict.fromkeys(classes)))
    target.obsm[f"{key}_probabilities"] = probabilities
    target.uns[key] = {**params, "classes": list(classes)}
    return target if copy else None
