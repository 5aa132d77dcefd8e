"""Retrieval: nearest-neighbour search over aligned vectors with faiss, and the reference set.

:class:`EmbeddingIndex` is the faiss index; :class:`ReferenceSet` holds the reference subjects
(reports, labels, one index per modality) whose reports a generated report may cite.

The faiss way: an index factory string (``"Flat"`` exact, ``"IVF1024,Flat"`` or ``"HNSW32"``
for millions of vectors, ``"IVF4096,PQ32"`` to compress), cosine similarity as inner product
on L2-normalised vectors, ``write_index`` / ``read_index`` on disk. The index keeps the
caller's string ids, so results name subjects, not row numbers; since every modality and the
text live in one aligned space, a brain query can search an index of gene vectors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import numpy as np

from neuroomics_bridge.errors import CorruptFileError, DataError, MissingFileError
from neuroomics_bridge.io import atomic_directory
from neuroomics_bridge.reports.report import Neighbour

if TYPE_CHECKING:
    from neuroomics_bridge.data.cohort import Cohort

__all__ = ["EmbeddingIndex", "Embedder", "Metric", "ReferenceSet", "SearchResult"]

Metric = Literal["cosine", "ip", "l2"]
INDEX_FORMAT = "neuroomics-bridge/index-v1"
BLAS_QUERY_THRESHOLD = 20


@dataclasses.dataclass
class SearchResult:
    """Per query, the ids of the ``k`` nearest items and their scores (similarity, or L2 distance)."""

    ids: list[list[str]]
    scores: np.ndarray


class EmbeddingIndex:
    """A faiss index with string ids. Build it with :meth:`build`.

    Parameters
    ----------
    index
        The faiss index.
    ids
        One string id per indexed vector, in index order.
    metric
        ``"cosine"`` (inner product of L2-normalised vectors), ``"ip"`` or ``"l2"``.
    factory
        The faiss index factory string it was built with.
    """

    def __init__(self, index: Any, ids: list[str], *, metric: Metric, factory: str) -> None:
        self.index, self.ids, self.metric, self.factory = index, list(ids), metric, factory

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str] | None = None,
        *,
        metric: Metric = "cosine",
        factory: str = "Flat",
        train_size: int | None = None,
        seed: int = 0,
    ) -> Self:
        """Build an index of ``vectors`` with faiss's index factory.

        Parameters
        ----------
        vectors
            ``(n, d)``, finite (absent subjects left out); normalised here for ``"cosine"``.
        ids
            One per vector (default ``"0"``, ``"1"``, ...).
        metric
            ``"cosine"``, ``"ip"`` or ``"l2"``.
        factory
            A faiss index factory string (``"Flat"`` exact, ``"IVF1024,Flat"``, ``"HNSW32"``,
            ``"IVF4096,PQ32"`` ...).
        train_size, seed
            Trainable factories (IVF, PQ) are trained on ``train_size`` vectors sampled with
            ``seed`` (default: all).

        Raises
        ------
        DataError
            On an unknown metric, an invalid factory string, vectors that are empty, not 2D or
            not finite, or a wrong number of ids.
        """
        import faiss

        if metric not in ("cosine", "ip", "l2"):
            raise DataError(f"metric: expected 'cosine', 'ip' or 'l2', got {metric!r}")
        matrix = _prepared(vectors, metric)
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(matrix.shape[1], factory, faiss_metric)
        except RuntimeError as err:
            raise DataError(f"faiss index factory {factory!r} is not valid for d={matrix.shape[1]} ({err})") from None
        if not index.is_trained:
            rows = np.random.default_rng(seed).permutation(len(matrix))[: train_size or len(matrix)]
            try:
                index.train(matrix[rows])
            except RuntimeError as err:  # e.g. fewer training vectors than IVF lists
                raise DataError(f"faiss index {factory!r} cannot be trained on {len(rows)} vectors ({err})") from None
        built = cls(index, [], metric=metric, factory=factory)
        built._add(matrix, ids)
        return built

    def add(self, vectors: np.ndarray, ids: Sequence[str] | None = None) -> None:
        """Append ``(n, d)`` vectors to the index; ``ids`` default to the next row numbers.

        Raises
        ------
        DataError
            For invalid vectors or a wrong number of ids.
        """
        self._add(_prepared(vectors, self.metric), ids)

    def _add(self, matrix: np.ndarray, ids: Sequence[str] | None) -> None:
        new_ids = [str(i) for i in ids] if ids is not None else [str(len(self.ids) + i) for i in range(len(matrix))]
        if len(new_ids) != len(matrix):
            raise DataError(f"ids: expected {len(matrix)} ids (one per vector), got {len(new_ids)}")
        self.index.add(matrix)
        self.ids.extend(new_ids)

    def search(
        self, queries: np.ndarray, k: int = 10, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> SearchResult:
        """The ``k`` nearest indexed items of each query row (fewer if the index is smaller).

        Parameters
        ----------
        queries
            ``(n_queries, d)``.
        k
            Neighbours per query.
        nprobe, ef_search
            ``nprobe`` (IVF: lists visited) and ``ef_search`` (HNSW: candidate list size) trade
            speed for recall on approximate indexes; set on the index and kept.

        Returns
        -------
        SearchResult
            Ids per query and ``(n_queries, min(k, len(self)))`` scores: similarities, or L2
            distances for ``"l2"``. An approximate index may find fewer than ``k`` (the IVF lists
            visited hold fewer items): a query's ids are then fewer, and the scores of the places
            left empty, at the end of its row, are NaN.

        Raises
        ------
        DataError
            For ``k < 1``, invalid queries or queries of another dimension, or a search
            parameter this index does not have (``nprobe`` on a ``Flat`` index).
        """
        import faiss

        if k < 1:
            raise DataError(f"k: expected at least 1 neighbour, got {k}")
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            if value is not None:
                try:
                    faiss.ParameterSpace().set_index_parameter(self.index, name, value)
                except RuntimeError as err:
                    raise DataError(
                        f"{name}={value}: not a search parameter of a {self.factory!r} index ({err})"
                    ) from None
        matrix = _prepared(queries, self.metric)
        if matrix.shape[1] != self.dim:
            raise DataError(f"queries: expected dimension {self.dim}, got {matrix.shape[1]}")
        # faiss 1.15 sends fewer than 128,000 queries to its SIMD loop instead of BLAS; from 20
        # queries on, one BLAS product is ~8x faster (measured: 256 queries x 100k vectors).
        threshold = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = min(threshold, BLAS_QUERY_THRESHOLD)
        try:
            scores, rows = self.index.search(matrix, min(k, len(self)))
        finally:
            faiss.cvar.distance_compute_blas_threshold = threshold
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return SearchResult(ids=ids, scores=np.where(rows >= 0, scores, np.nan))

    @property
    def dim(self) -> int:
        """The dimension of the indexed vectors."""
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss`` and ``ids.json`` into ``directory``, atomically; returns ``directory``."""
        import faiss

        target = Path(directory)
        with atomic_directory(target, kind="EmbeddingIndex", marker="ids.json") as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            meta = {"format": INDEX_FORMAT, "metric": self.metric, "factory": self.factory, "ids": self.ids}
            (tmp / "ids.json").write_text(json.dumps(meta))
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        """Read an index written by :meth:`save`.

        Raises
        ------
        MissingFileError
            When ``index.faiss`` or ``ids.json`` is missing.
        CorruptFileError
            When either is unreadable or they do not match.
        """
        import faiss

        folder = Path(directory)
        if not (folder / "index.faiss").is_file() or not (folder / "ids.json").is_file():
            raise MissingFileError(f"{folder}: expected index.faiss and ids.json (written by EmbeddingIndex.save)")
        meta = _read_json_lists(folder / "ids.json", lists=("ids",), texts=("format", "metric", "factory"))
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as err:
            raise CorruptFileError(f"{folder / 'index.faiss'}: unreadable index ({err})") from None
        if meta["format"] != INDEX_FORMAT or len(meta["ids"]) != index.ntotal:
            raise CorruptFileError(
                f"{folder / 'ids.json'}: expected format {INDEX_FORMAT!r} and {index.ntotal} ids (index.faiss), "
                f"got {meta['format']!r} and {len(meta['ids'])}"
            )
        return cls(index, meta["ids"], metric=meta["metric"], factory=meta["factory"])


def _read_json_lists(file: Path, *, lists: Sequence[str], texts: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON object from ``file`` whose ``lists`` keys hold lists and ``texts`` keys strings;
    :class:`CorruptFileError` naming the file and the first key that is not so."""
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(content, dict):
        raise CorruptFileError(f"{file}: expected a JSON object, got {type(content).__name__}")
    for keys, kind in ((lists, list), (texts, str)):
        for key in keys:
            if not isinstance(content.get(key), kind):
                found = type(content[key]).__name__ if key in content else "nothing"
                raise CorruptFileError(f"{file}: expected {key!r} to be a {kind.__name__}, got {found}")
    return content


def _prepared(vectors: np.ndarray, metric: Metric) -> np.ndarray:
    import faiss

    matrix = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if matrix.ndim != 2 or len(matrix) == 0:
        raise DataError(f"vectors: expected a non-empty (n, d) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise DataError("vectors: contain NaN or infinite values (absent subjects must be left out)")
    if metric == "cosine":
        matrix = matrix.copy()
        faiss.normalize_L2(matrix)
    return matrix


class Embedder(Protocol):
    """What :meth:`ReferenceSet.build` needs of a bridge: its modalities and aligned embeddings."""

    @property
    def modalities(self) -> list[str]:
        """The modalities the bridge can embed."""
        ...

    def embed(self, modality: str, X: np.ndarray) -> np.ndarray:
        """``(n, d_m)`` modality vectors to ``(n, embed_dim)`` unit vectors in the aligned space."""
        ...


@dataclasses.dataclass
class ReferenceSet:
    """Reference subjects a report may cite: reports, labels and a faiss index per modality."""

    subject_ids: list[str]
    reports: list[str]
    labels: list[str | None]
    indexes: dict[str, EmbeddingIndex]

    @classmethod
    def build(cls, bridge: Embedder, cohort: Cohort) -> Self:
        """Index the aligned embeddings of ``cohort``'s subjects (usually the training fold).

        Each modality's index holds the subjects that have it; modalities no subject has get none.

        Raises
        ------
        DataError
            When the cohort has no reports.
        """
        if cohort.reports is None:
            raise DataError("ReferenceSet: the reference cohort needs reports")
        indexes = {}
        for modality in bridge.modalities:
            rows = cohort.present(modality)
            if rows.any():
                ids = [s for s, keep in zip(cohort.subject_ids, rows, strict=True) if keep]
                indexes[modality] = EmbeddingIndex.build(bridge.embed(modality, cohort.features[modality][rows]), ids)
        labels = list(cohort.labels) if cohort.labels is not None else [None] * cohort.n_subjects
        return cls(list(cohort.subject_ids), list(cohort.reports), labels, indexes)

    def neighbours(
        self, embeddings: Mapping[str, np.ndarray], k: int, *, exclude: Collection[str] = ()
    ) -> list[Neighbour]:
        """The ``k`` reference subjects most similar over the given modalities' unit vectors.

        Parameters
        ----------
        embeddings
            Modality -> ``(embed_dim,)`` unit vector of one subject; modalities without an index
            are skipped.
        k
            How many neighbours to return.
        exclude
            Reference subject ids never returned: the query subject's own id when it is in the
            reference set too (its own report would otherwise be its nearest "similar subject").

        Returns
        -------
        list of Neighbour
            Ranked by the mean similarity over the modalities in which each was found.
        """
        excluded = set(exclude)
        scores: dict[str, list[float]] = {}
        for modality, vector in embeddings.items():
            if modality in self.indexes:
                found = self.indexes[modality].search(vector[None], k=k * 3 + len(excluded))
                for subject, score in zip(found.ids[0], found.scores[0], strict=False):
                    if subject not in excluded:
                        scores.setdefault(subject, []).append(float(score))
        ranked = sorted(scores, key=lambda s: -float(np.mean(scores[s])))[:k]
        row = {s: i for i, s in enumerate(self.subject_ids)}
        return [Neighbour(s, float(np.mean(scores[s])), self.labels[row[s]], self.reports[row[s]]) for s in ranked]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write reports, labels and one faiss index per modality, atomically."""
        target = Path(directory)
        with atomic_directory(target, kind="ReferenceSet", marker="references.json") as tmp:
            table = {"subject_ids": self.subject_ids, "reports": self.reports, "labels": self.labels}
            table["indexed_modalities"] = sorted(self.indexes)  # a lost index folder is then noticed
            (tmp / "references.json").write_text(json.dumps(table))
            for modality, index in self.indexes.items():
                index.save(tmp / modality)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        """Read a reference set written by :meth:`save`.

        Raises
        ------
        MissingFileError
            When ``references.json``, an index folder it lists or an index's files are missing.
        CorruptFileError
            When ``references.json`` or an index is unreadable, or an index holds subjects that
            ``references.json`` does not list.
        """
        folder = Path(directory)
        file = folder / "references.json"
        if not file.is_file():
            raise MissingFileError(f"{file}: missing; not a saved ReferenceSet")
        table = _read_json_lists(file, lists=("subject_ids", "reports", "labels"))
        lengths = {key: len(table[key]) for key in ("subject_ids", "reports", "labels")}
        if len(set(lengths.values())) != 1:
            raise CorruptFileError(f"{file}: expected one report and label per subject id, got {lengths}")
        for modality in table.get("indexed_modalities", []):  # a reference set saved before 2026-12-07 lists none
            if not (folder / modality).is_dir():
                raise MissingFileError(f"{folder / modality}: missing; {file.name} lists a {modality!r} index")
        indexes = {p.name: EmbeddingIndex.load(p) for p in sorted(folder.iterdir()) if p.is_dir()}
        listed = set(table["subject_ids"])
        for modality, index in indexes.items():
            unknown = [i for i in index.ids if i not in listed]
            if unknown:
                raise CorruptFileError(f"{folder / modality}: indexes subjects {unknown[:5]} that {file.name} lacks")
        return cls(table["subject_ids"], table["reports"], table["labels"], indexes)
