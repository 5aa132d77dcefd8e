"""Applying a trained bridge to cohort folders: reports, scores, subject vectors, faiss indexes.

These are the functions behind ``nob report``, ``nob evaluate``, ``nob encode`` and ``nob index``. A bridge folder
here is a :class:`BridgeBundle` (what ``nob demo`` writes: the adapters, the fitted
:class:`CohortEncoder` and, optionally, the :class:`ReferenceSet` reports cite).
Reports are produced ``batch_size`` subjects at a time and streamed to the output file, so memory
does not grow with the cohort.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.io import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    check_replaceable,
    check_writable,
    unreadable_table,
)
from neuroomics_bridge.notice import RESEARCH_NOTICE
from neuroomics_bridge.progress import progress, silenced
from neuroomics_bridge.reports.report import REPORT_BATCH_SIZE, REPORT_MAX_NEW_TOKENS

if TYPE_CHECKING:
    from neuroomics_bridge.reports.report import Report

__all__ = ["write_reports", "evaluate_folder", "save_reports", "encode_folder", "build_index", "search_index"]

FORMATS = (".jsonl", ".md", ".html")
EVALUATION_MARKER = "metrics.json"  # every nob evaluate folder has it


def write_reports(
    bridge_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int = REPORT_BATCH_SIZE,
    max_new_tokens: int = REPORT_MAX_NEW_TOKENS,
    show_progress: bool | None = None,
) -> int:
    """Encode and report every subject of ``data_dir`` (``nob report``), streamed to ``out``.

    Parameters
    ----------
    bridge_dir
        A :class:`BridgeBundle` folder with its encoders; its reference set, if any, is cited
        and gives the classes.
    data_dir
        A cohort folder (:meth:`Cohort.to_files` layout).
    out
        A ``.jsonl``, ``.md`` or ``.html`` file, written atomically.
    batch_size
        Subjects encoded and reported at a time (decoded together).
    max_new_tokens
        Longest findings text per report.
    show_progress
        Show a progress bar; ``None``: only when stderr is a terminal; ``False``: no bar at all,
        the encoders' and generation's included.

    Returns
    -------
    int
        How many reports were written.

    Raises
    ------
    DataError
        For another output suffix, an ``out`` that cannot be written (checked first), or a
        ``batch_size`` or ``max_new_tokens`` under 1.
    """
    from neuroomics_bridge.data.cohort import Cohort

    target = Path(out)
    if target.suffix not in FORMATS:
        raise DataError(f"{target}: expected an output file ending in {', '.join(FORMATS)}")
    check_writable(target)
    if batch_size < 1:
        raise DataError(f"batch_size: expected at least 1 subject per batch, got {batch_size}")
    _check_max_new_tokens(max_new_tokens)
    cohort = Cohort.from_files(data_dir)  # a bad folder fails before torch and the bridge are loaded

    from neuroomics_bridge.bridge.bundle import BridgeBundle

    bundle = BridgeBundle.load(bridge_dir, need_encoders=True)
    bridge, encoders, reference = bundle.bridge, bundle.encoders, bundle.references
    classes = sorted({label for label in reference.labels if label}) if reference is not None else []
    written = 0
    with silenced(show_progress is False), atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        if target.suffix == ".html":
            handle.write(f'<!doctype html><html lang="en"><meta charset="utf-8"><title>reports</title><body>'
                         f"<p><b>{html.escape(RESEARCH_NOTICE)}</b></p>")  # fmt: skip
        chunks = [cohort.subject_ids[i : i + batch_size] for i in range(0, cohort.n_subjects, batch_size)]
        for chunk in progress(chunks, desc="report", show=show_progress, unit="batch"):
            part = encoders.transform(cohort.subset(chunk))
            inputs = {m: part.features[m] for m in bridge.modalities if m in part.features}
            reports = bridge.generate_report(
                inputs,
                subject_ids=chunk,
                covariates=part.covariates,
                reference=reference,
                classes=classes,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            for report in reports:
                handle.write(_render(report, target.suffix))
                written += 1
        if target.suffix == ".html":
            handle.write("</body></html>")
    return written


def evaluate_folder(
    bridge_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fact_columns: Sequence[str] = (),
    reports: bool = True,
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int = REPORT_MAX_NEW_TOKENS,
    show_progress: bool | None = None,
) -> dict[str, float]:
    """Score a saved bridge on a labelled cohort folder (``nob evaluate``), as the demo scores its own.

    Writes ``out_dir/metrics.json``, ``out_dir/index.html`` (with its plots) and, with
    ``reports``, the generated reports (``reports.jsonl``, ``reports.md``). The metrics are the
    demo's: zero-shot accuracy / macro-F1 / AUROC per modality and retrieval recall@k
    (:func:`~neuroomics_bridge.evaluation.evaluate_bridge`), report perplexity with the own vs a
    shuffled subject's prefix, and, with ``reports``, report factuality per fact category for
    every prompt layout beside its shuffled control and the retrieval-copy baseline
    (:func:`~neuroomics_bridge.evaluation.evaluate_reports`).

    Subjects that are also in the bridge's reference set (its training fold: the same id and
    the same report) are left out: their own report is in the index, so retrieval would be a
    lookup. ``evaluate/subjects`` and ``evaluate/excluded_reference_subjects`` say how many were
    scored and left out.

    Parameters
    ----------
    bridge_dir
        A :class:`BridgeBundle` folder with its encoders (what ``nob demo`` writes).
    data_dir
        A labelled cohort folder (:meth:`Cohort.to_files` layout; ``reports.csv`` with a label).
    out_dir
        Where the results go: written as a whole at the end, replacing an earlier evaluation's
        folder (so no file of another run stays beside these metrics), never another folder.
    fact_columns
        Categorical covariate or phenotype columns that count as facts a report must state
        (the synthetic cohort's severity, sex and age are found without being named).
    reports
        Generate and score reports (most of the run time); ``False`` scores the aligned space only.
    limit
        Score only the first ``limit`` subjects (after leaving out reference subjects).
    seed
        Seed of the shuffled-subject controls.
    max_new_tokens
        Longest findings text per generated report (fewer: a faster, rougher check); recorded as
        ``evaluate/max_new_tokens``.
    show_progress
        Progress bars; ``None``: only when stderr is a terminal; ``False``: none at all.

    Returns
    -------
    dict[str, float]
        What ``metrics.json`` holds.

    Raises
    ------
    DataError
        When ``out_dir`` is a file, a folder of other files or not writable (checked first),
        ``limit`` or ``max_new_tokens`` is under 1, the cohort has no labels, or no subject is
        left to score.
    """
    from neuroomics_bridge.data.cohort import Cohort

    out = Path(out_dir)
    check_replaceable(out, kind="evaluation", marker=EVALUATION_MARKER)
    if limit is not None and limit < 1:  # a slice would drop subjects from the end instead
        raise DataError(f"limit: expected None or at least 1 subject, got {limit}")
    _check_max_new_tokens(max_new_tokens)
    raw = Cohort.from_files(data_dir)  # a bad or unlabelled folder fails before torch and the bridge are loaded
    if raw.labels is None:
        raise DataError(f"{data_dir}: no labels; expected a 'label' column in reports.csv to score against")

    from neuroomics_bridge.bridge.bundle import BridgeBundle
    from neuroomics_bridge.dashboard import write_page
    from neuroomics_bridge.evaluation.bridge_metrics import evaluate_bridge, evaluate_reports, report_label_metrics
    from neuroomics_bridge.reports.prompts import DEFAULT_LAYOUT

    bundle = BridgeBundle.load(bridge_dir, need_encoders=True)
    bridge, reference = bundle.bridge, bundle.references
    seen = set(zip(reference.subject_ids, reference.reports, strict=True)) if reference is not None else set()
    texts = raw.reports or [None] * raw.n_subjects
    in_reference = [(s, text) in seen for s, text in zip(raw.subject_ids, texts, strict=True)]
    kept = [s for s, known in zip(raw.subject_ids, in_reference, strict=True) if not known][:limit]
    if not kept:
        raise DataError(f"{data_dir}: no subject left to score ({raw.n_subjects} subjects, all in the reference set)")
    with silenced(show_progress is False):  # the encoders' and generation's bars too
        cohort = bundle.encoders.transform(raw.subset(kept))
        metrics = {
            "evaluate/subjects": float(cohort.n_subjects),
            "evaluate/excluded_reference_subjects": float(sum(in_reference)),
            **evaluate_bridge(bridge, cohort),
        }
        if cohort.reports is not None:
            metrics |= evaluate_bridge(bridge, cohort, stage="prefix")
        written: list[Report] = []
        if reports:
            evaluation = evaluate_reports(
                bridge, cohort, reference=reference, fact_columns=fact_columns, seed=seed,
                max_new_tokens=max_new_tokens, show_progress=show_progress,
            )  # fmt: skip
            metrics |= report_label_metrics(evaluation, cohort) | evaluation.metrics
            metrics["evaluate/max_new_tokens"] = float(max_new_tokens)  # a 12-token score is not an 80-token one
            written = evaluation.reports[DEFAULT_LAYOUT]
    with atomic_directory(out, kind="evaluation", marker=EVALUATION_MARKER) as tmp:
        if written:
            save_reports(tmp, written)
        (tmp / EVALUATION_MARKER).write_text(json.dumps(metrics, indent=2))
        write_page(
            tmp,
            bridge,
            cohort=cohort,
            test=cohort,
            reports=written,
            metrics=metrics,
            title="neuroomics-bridge evaluation",
            subjects=f"{cohort.n_subjects} subjects of {data_dir} scored",
        )
    return metrics


def save_reports(out: Path, reports: Sequence[Report]) -> None:
    """``out/reports.jsonl`` (one :meth:`Report.to_dict` per line) and ``out/reports.md``, atomically."""
    atomic_write_text(out / "reports.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in reports))
    atomic_write_text(out / "reports.md", "\n".join(r.to_markdown() for r in reports))


def encode_folder(
    encoders_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], out: str | os.PathLike[str]
) -> pd.DataFrame:
    """Encode a cohort folder with a saved :class:`CohortEncoder` into a Parquet table (``nob encode``).

    Returns
    -------
    pandas.DataFrame
        What was written to ``out``: one row per subject, ``subject_id`` then ``<modality>_<i>``
        columns (NaN where absent).

    Raises
    ------
    MissingFileError
        When ``encoders_dir`` does not exist.
    """
    from neuroomics_bridge.data.cohort import Cohort
    from neuroomics_bridge.encoders.cohort import CohortEncoder

    check_writable(out)
    encoded = CohortEncoder.load(_required(Path(encoders_dir), "a saved CohortEncoder")).transform(
        Cohort.from_files(data_dir)
    )
    columns = {"subject_id": encoded.subject_ids}
    for modality, matrix in encoded.features.items():
        columns |= {f"{modality}_{i}": matrix[:, i] for i in range(matrix.shape[1])}
    table = pd.DataFrame(columns)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    return table


def build_index(
    vectors: str | os.PathLike[str],
    modality: str,
    out: str | os.PathLike[str],
    *,
    bridge_dir: str | os.PathLike[str] | None = None,
    factory: str = "Flat",
):  # -> EmbeddingIndex
    """Index one modality's vectors from a ``nob encode`` table and save it to ``out`` (``nob index build``).

    Subjects without the modality are left out.

    Parameters
    ----------
    vectors
        A Parquet table written by :func:`encode_folder`.
    modality
        Whose ``<modality>_<i>`` columns to index.
    out
        The index folder.
    bridge_dir
        Embed into this bridge's aligned space first, so other modalities can query the index.
    factory
        The faiss index factory string.

    Returns
    -------
    EmbeddingIndex
        The saved index.

    Raises
    ------
    MissingFileError
        When ``vectors`` does not exist.
    DataError
        When the table has no columns for ``modality``.
    """
    from neuroomics_bridge.retrieval import EmbeddingIndex

    ids, matrix = _vectors(vectors, modality, bridge_dir)
    index = EmbeddingIndex.build(matrix, ids, factory=factory)
    index.save(out)
    return index


def search_index(
    index_dir: str | os.PathLike[str],
    vectors: str | os.PathLike[str],
    modality: str,
    *,
    k: int = 5,
    bridge_dir: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """One JSON line per query subject: its ``k`` nearest indexed subjects and their scores (``nob index search``).

    ``vectors``, ``modality`` and ``bridge_dir`` are as in :func:`build_index`; the queries must
    be in the same space as the index.
    """
    from neuroomics_bridge.retrieval import EmbeddingIndex

    index = EmbeddingIndex.load(index_dir)
    ids, matrix = _vectors(vectors, modality, bridge_dir)
    found = index.search(matrix, k)
    for query, neighbours, scores in zip(ids, found.ids, found.scores, strict=True):
        yield json.dumps(
            {
                "query": query,
                "neighbours": [
                    {"id": n, "score": round(float(s), 4)} for n, s in zip(neighbours, scores, strict=False)
                ],
            }
        )


def _vectors(
    path: str | os.PathLike[str], modality: str, bridge_dir: str | os.PathLike[str] | None
) -> tuple[list[str], np.ndarray]:
    file = _required(Path(path), "a vectors table written by nob encode")
    try:
        table = pd.read_parquet(file)
    except ValueError as err:  # pyarrow's ArrowInvalid: not Parquet, truncated, damaged
        raise unreadable_table(file, err) from None
    if "subject_id" not in table.columns:
        raise DataError(f"{file}: expected a 'subject_id' column, as nob encode writes; got {list(table.columns)[:9]}")
    # <modality>_<i>, as nob encode names them: "brain" must not also take the columns of "brain_fc"
    columns = [c for c in table.columns if re.fullmatch(rf"{re.escape(modality)}_\d+", str(c))]
    if not columns:
        found = sorted({str(c).rsplit("_", 1)[0] for c in table.columns if c != "subject_id"})
        raise DataError(f"{file}: no columns for modality {modality!r}; modalities found: {found}")
    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(table[c])]
    if len(numeric) < len(columns):
        raise DataError(f"{file}: column(s) {sorted(set(columns) - set(numeric))[:5]} hold text; expected numbers")
    matrix = table[columns].to_numpy(np.float32)
    keep = ~np.isnan(matrix).all(axis=1)
    ids, matrix = table["subject_id"].astype(str)[keep].tolist(), matrix[keep]
    if bridge_dir is not None:  # the adapters' heads alone: no backbone to load
        from neuroomics_bridge.bridge.model import embed_vectors, load_adapters

        matrix = embed_vectors(load_adapters(bridge_dir), modality, matrix)
    return ids, matrix


def _required(path: Path, what: str) -> Path:
    if not path.exists():
        raise MissingFileError(f"{path}: missing; expected {what}")
    return path


def _render(report, suffix: str) -> str:  # report: Report
    if suffix == ".jsonl":
        return json.dumps(report.to_dict()) + "\n"
    if suffix == ".md":
        return report.to_markdown() + "\n"
    return report.to_html() + "\n"


def _check_max_new_tokens(max_new_tokens: int) -> None:
    if max_new_tokens < 1:  # generation would refuse it too, but only after loading and encoding
        raise DataError(f"max_new_tokens: expected at least 1 token to generate, got {max_new_tokens}")
