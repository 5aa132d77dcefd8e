"""Run a set of benchmarks on one backbone, save the scores, compare two runs.

A run records what it measured (backbone name, weights hash and dtype, LoRA adapter hash, data
files' hashes, mode, shots, seed, prompt format), so a comparison can say when two runs are not
comparable. Results are written as JSON (machine-readable), Markdown (a table to read), a PNG of
the headline metrics and a JSONL of every item's prediction, each atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.evaluation.loaders import Example
from neuroomics_bridge.evaluation.scoring import Mode, PromptFormat, TaskResult, evaluate_task
from neuroomics_bridge.evaluation.tasks import BenchmarkTask, get_task, task_files
from neuroomics_bridge.io import atomic_write_text, check_writable, file_sha256, read_jsonl, save_figure
from neuroomics_bridge.notice import RESEARCH_NOTICE
from neuroomics_bridge.progress import progress, silenced

if TYPE_CHECKING:
    from neuroomics_bridge.backbone.text import TextBackbone

__all__ = [
    "RUN_FILES",
    "BenchmarkRun",
    "run_benchmarks",
    "locate_benchmarks",
    "results_path",
    "compare_runs",
    "plot_runs",
]

RUN_FILES = (".json", ".md", ".png", ".predictions.jsonl")
"""The files of a saved run, by suffix: its scores (the path named), table, plot and predictions."""

CAVEAT = (
    "Exam-style benchmarks do not represent clinical practice. Research use only, not for clinical decision-making."
)


@dataclasses.dataclass
class BenchmarkRun:
    """Per-task results of one backbone (plus adapter) under one setting.

    Attributes
    ----------
    metadata
        What was measured: backbone name, weights hash and dtype, adapter and its hash, mode,
        shots, seed, limit, prompt format, each task's data file with its hash, library version
        and date.
    results
        One :class:`TaskResult` per task.
    """

    metadata: dict[str, Any]
    results: list[TaskResult]

    def headline(self) -> dict[str, tuple[str, float]]:
        """Task -> (primary metric, value)."""
        return {r.task: (get_task(r.task).primary, r.metrics[get_task(r.task).primary]) for r in self.results}

    def to_json(self) -> dict[str, Any]:
        """The saved JSON form: the research-use notice, metadata, and per task its settings, primary
        metric and metrics (no predictions)."""
        results = {
            r.task: {"family": r.family, "mode": r.mode, "shots": r.shots, "n": r.n,
                     "primary": get_task(r.task).primary, "metrics": r.metrics}
            for r in self.results
        }  # fmt: skip
        return {"notice": RESEARCH_NOTICE, "metadata": self.metadata, "results": results}

    def to_markdown(self) -> str:
        """The run's settings, a table of headline metrics (± standard error), every metric, and the caveat."""
        meta = self.metadata
        lines = [
            f"# Benchmarks: {_label(meta)}",
            "",
            f"{meta['shots']}-shot, mode {meta['mode']}, {meta['prompt_format']} prompts, seed {meta['seed']}, "
            f"{meta.get('dtype', 'unknown dtype')}"
            + (f", first {meta['limit']} items per task" if meta.get("limit") else ""),
            "",
            "| task | family | scored by | n | metric | value |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            primary = get_task(r.task).primary
            value = f"{r.metrics[primary]:.3f}"
            if f"{primary}_stderr" in r.metrics:
                value += f" ± {r.metrics[f'{primary}_stderr']:.3f}"
            lines.append(f"| {r.task} | {r.family} | {r.mode} | {r.n} | {primary} | {value} |")
        lines += ["", "All metrics:", ""]
        for r in self.results:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
            lines.append(f"- {r.task}: {shown}")
        return "\n".join([*lines, "", f"_{CAVEAT}_", ""])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (.json), and beside it the same name as .md, .png and .predictions.jsonl.

        The PNG shows the headline metrics (:func:`plot_runs`); each file is written atomically.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        DataError
            When ``path`` does not end in ``.json``.
        """
        target = results_path(path)
        rows = [{"task": r.task, **p, "notice": RESEARCH_NOTICE} for r in self.results for p in r.predictions]
        atomic_write_text(target.with_suffix(".predictions.jsonl"), "".join(json.dumps(row) + "\n" for row in rows))
        atomic_write_text(target.with_suffix(".md"), self.to_markdown())
        plot_runs([self], target.with_suffix(".png"))
        atomic_write_text(target, json.dumps(self.to_json(), indent=2) + "\n")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BenchmarkRun:
        """A saved run: scores and metadata, and the predictions if their JSONL is beside it.

        Raises
        ------
        MissingFileError
            When the results file does not exist.
        DataError
            When it is not a results file written by ``nob eval``.
        """
        file = Path(path)
        if not file.is_file():
            raise MissingFileError(f"{file}: benchmark results file does not exist")
        predictions: dict[str, list[dict[str, Any]]] = {}
        if file.with_suffix(".predictions.jsonl").is_file():
            for _, row in read_jsonl(file.with_suffix(".predictions.jsonl")):
                row.pop("notice", None)
                predictions.setdefault(str(row.pop("task", "")), []).append(row)
        try:
            saved = json.loads(file.read_text(encoding="utf-8"))
            results = [
                TaskResult(task, r["family"], r["mode"], r["shots"], r["n"], r["metrics"], predictions.get(task, []))
                for task, r in saved["results"].items()
            ]
            metadata = saved["metadata"]
            if "backbone" not in metadata:  # what comparisons label the run with
                raise KeyError("metadata.backbone")
            for result in results:  # what comparisons, tables and plots read of each task
                primary = get_task(result.task).primary
                if "sha256" not in metadata["data"][result.task] or primary not in result.metrics:
                    raise KeyError(f"data.{result.task}.sha256 or results.{result.task}.metrics.{primary}")
            return cls(metadata, results)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{file}: not a results file written by nob eval ({type(err).__name__}: {err})") from None


def results_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a results file: :class:`DataError` unless it ends in ``.json`` (the run's
    ``.md``, ``.png`` and ``.predictions.jsonl`` go beside it) and could be written there.

    ``nob eval`` checks ``--out`` with it before loading a backbone, so a wrong name does not
    throw away a whole run's scores.
    """
    target = Path(path)
    if target.suffix != ".json":
        raise DataError(f"{target}: the results file must end in .json (.md, .png and .predictions.jsonl go beside it)")
    check_writable(target)
    return target


def locate_benchmarks(
    tasks: Sequence[str], data_dir: str | os.PathLike[str], *, limit: int | None = None, shots: int = 0
) -> dict[str, tuple[Path, Path | None]]:
    """Each task's evaluation file (and train file, or ``None``) in ``data_dir``, after checking
    the request: the checks :func:`run_benchmarks` makes before any work, on their own, so that
    ``nob eval`` makes them before loading a backbone.

    Every file is read (reading is quick beside scoring), so a malformed file, too few
    exemplars for ``shots`` or an entity type the task does not know fails here, not after the
    tasks before it have been scored.

    Raises
    ------
    DataError, MissingFileError
        For an unknown task, a ``limit`` under 1, negative ``shots``, missing or ambiguous
        data files, or as the readers raise.
    """
    return {
        name: (data.evaluation, data.train) for name, data in _read_benchmarks(tasks, data_dir, limit, shots).items()
    }


class _TaskData(NamedTuple):
    """A task's files and what they hold: the evaluation items and the pool exemplars come from."""

    evaluation: Path
    train: Path | None
    every: list[Example]
    pool: list[Example]


def _read_benchmarks(
    tasks: Sequence[str], data_dir: str | os.PathLike[str], limit: int | None, shots: int
) -> dict[str, _TaskData]:
    """Every task's files located, read and checked (see :func:`locate_benchmarks`)."""
    if limit is not None and limit < 1:  # a slice would drop items from the end instead
        raise DataError(f"limit: expected None or at least 1 item per task, got {limit}")
    if shots < 0:
        raise DataError(f"shots: expected 0 (zero-shot) or more examples per prompt, got {shots}")
    located = {name: task_files(data_dir, get_task(name)) for name in tasks}
    read = {}
    for name, (evaluation, train) in located.items():
        task = get_task(name)
        every = _checked_entity_types(task, task.reader(evaluation), evaluation)
        pool = every if train is None else _checked_entity_types(task, task.reader(train), train)
        needed = shots + (train is None)  # an item is never its own exemplar
        if shots and len(pool) < needed:
            raise DataError(
                f"{train or evaluation}: {shots}-shot prompts need {needed} items to draw exemplars from; "
                f"the file has {len(pool)}"
            )
        read[name] = _TaskData(evaluation, train, every, pool)
    return read


def _checked_entity_types(task: BenchmarkTask, examples: list[Example], file: Path) -> list[Example]:
    """``examples``, refused when an entity task's gold entity has a type the task does not
    score: no answer could match it."""
    for example in examples if task.kind == "entities" else ():
        unknown = sorted({entity.partition(":")[0] for entity in example.answer_set} - set(task.labels))
        if unknown:
            raise DataError(
                f"{file}: item {example.id!r} has entity type(s) {unknown}; "
                f"{task.name} scores {list(task.labels)} (map the corpus's types onto them)"
            )
    return examples


def run_benchmarks(
    backbone: TextBackbone,
    tasks: Sequence[str],
    data_dir: str | os.PathLike[str],
    *,
    mode: Mode = "auto",
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    prompt_format: PromptFormat = "chat",
    batch_size: int = 8,
    adapter: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
) -> BenchmarkRun:
    """Score ``backbone`` on each of ``tasks`` read from ``data_dir``.

    Every task's files are located before any is scored, so an unknown name or missing file
    fails early.

    Parameters
    ----------
    tasks
        Names from :data:`TASKS`.
    data_dir
        Holds each task's files (see :func:`task_files`).
    mode, shots, seed, prompt_format, batch_size
        As in :func:`evaluate_task`; exemplars come from the task's train file, else from the
        whole evaluation file.
    limit
        Keeps the first items of each task (for quick looks; the comparison then says so).
    adapter
        The LoRA folder already applied to the backbone, so it is recorded with its hash.
    show_progress
        Show a progress bar over tasks; ``None``: only when stderr is a terminal; ``False``: no
        bar at all, generation's included.

    Raises
    ------
    DataError, MissingFileError
        For an unknown task, a ``limit`` under 1, negative ``shots``, missing or ambiguous data files, an adapter
        folder without ``adapter_model.safetensors``, or as the readers and
        :func:`evaluate_task` raise.
    """
    from neuroomics_bridge import __version__

    read = _read_benchmarks(tasks, data_dir, limit, shots)  # every file, before any work
    chosen = [get_task(name) for name in tasks]
    files: dict[str, Any] = {}
    results = []
    for task in progress(chosen, desc="benchmarks", show=show_progress, unit="task"):
        evaluation, _, every, pool = read[task.name]  # the full pool: limit keeps each item's shots
        examples = every[:limit]
        files[task.name] = {"file": str(evaluation), "sha256": file_sha256(evaluation), "n": len(examples)}
        with silenced(show_progress is False):  # generation's own bars too
            results.append(
                evaluate_task(
                    backbone, task, examples, mode=mode, shots=shots, pool=pool, seed=seed,
                    prompt_format=prompt_format, batch_size=batch_size,
                )
            )  # fmt: skip
    metadata = {
        "backbone": backbone.name,
        "weights_sha256": backbone.weights_hash,
        "dtype": str(backbone.dtype).removeprefix("torch."),  # bf16 and float32 scores differ slightly
        "adapter": None if adapter is None else str(adapter),
        "adapter_sha256": None if adapter is None else _adapter_hash(Path(adapter)),
        "mode": mode,
        "shots": shots,
        "seed": seed,
        "limit": limit,
        "prompt_format": prompt_format,
        "data": files,
        "library_version": __version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return BenchmarkRun(metadata, results)


def _adapter_hash(directory: Path) -> str:
    weights = directory / "adapter_model.safetensors"
    if not weights.is_file():
        raise MissingFileError(f"{directory}: no adapter_model.safetensors (a peft LoRA folder was expected)")
    return file_sha256(weights)


def _label(metadata: dict[str, Any]) -> str:
    adapter = metadata.get("adapter")
    return metadata["backbone"] + (f" + LoRA {Path(adapter).name}" if adapter else "")


def compare_runs(before: BenchmarkRun, after: BenchmarkRun) -> str:
    """A Markdown table of two runs side by side, with the change per metric.

    An accuracy change is tested when both runs carry their predictions on the same items: an
    exact McNemar test on the items one run got right and the other wrong (paired, as the items
    are the same); otherwise it is set against 1.96 combined binomial standard errors, which is
    conservative for paired data. ``*`` marks p < 0.05. Rows whose data files or settings differ
    between the runs are flagged, since their numbers are not comparable.
    """
    a, b = before.metadata, after.metadata
    lines = [
        f"# Benchmarks: {_label(a)} (A) vs {_label(b)} (B)",
        "",
        "| task | metric | A | B | B - A | note |",
        "|---|---|---|---|---|---|",
    ]
    settings = [k for k in ("mode", "shots", "seed", "limit", "prompt_format", "dtype") if a.get(k) != b.get(k)]
    ra, rb = {r.task: r for r in before.results}, {r.task: r for r in after.results}
    for task in [t for t in ra if t in rb]:
        notes = []
        if a["data"][task]["sha256"] != b["data"][task]["sha256"]:
            notes.append("different data")
        notes += [f"{k} differs" for k in settings]
        for metric in [m for m in ra[task].metrics if m in rb[task].metrics and not m.endswith("_stderr")]:
            va, vb = ra[task].metrics[metric], rb[task].metrics[metric]
            test = _accuracy_test(ra[task], rb[task]) if metric == "accuracy" else ""
            note = "; ".join([*notes, test] if test else notes)
            lines.append(f"| {task} | {metric} | {va:.3f} | {vb:.3f} | {vb - va:+.3f} | {note} |")
    missing = sorted(set(ra) ^ set(rb))
    if missing:
        lines += ["", f"Only in one run: {', '.join(missing)}"]
    lines += ["", "`*`: p < 0.05 (McNemar on paired items, else binomial standard errors).", "", f"_{CAVEAT}_", ""]
    return "\n".join(lines)


def _accuracy_test(a: TaskResult, b: TaskResult) -> str:
    """The significance note of an accuracy change (see :func:`compare_runs`)."""
    from scipy.stats import binomtest, norm

    right_a = {p["id"]: bool(p["correct"]) for p in a.predictions if "correct" in p}
    right_b = {p["id"]: bool(p["correct"]) for p in b.predictions if "correct" in p}
    if right_a and right_a.keys() == right_b.keys():
        only_a = sum(right_a[i] and not right_b[i] for i in right_a)
        only_b = sum(right_b[i] and not right_a[i] for i in right_a)
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        return f"McNemar p={p:.3g} ({only_a} only A right, {only_b} only B right){' *' if p < 0.05 else ''}"
    errors = [r.metrics.get("accuracy_stderr") for r in (a, b)]
    if None in errors or not np.isfinite(errors).all():
        return ""
    z = abs(b.metrics["accuracy"] - a.metrics["accuracy"]) / max(float(np.hypot(*errors)), 1e-12)
    p = 2 * norm.sf(z)
    return f"p={p:.3g} (standard errors){' *' if p < 0.05 else ''}"


def plot_runs(runs: Sequence[BenchmarkRun], path: str | os.PathLike[str]) -> Path:
    """Each task's headline metric as grouped bars, one colour per run, written as a PNG at ``path``.

    Error bars show the binomial standard error where there is one; returns ``path``.
    """
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r.task for run in runs for r in run.results))
    width = 0.8 / len(runs)
    figure = Figure(figsize=(max(6.0, 0.9 * len(tasks) + 2), 3.6))
    axis = figure.subplots()
    for i, run in enumerate(runs):
        by_task = {r.task: r for r in run.results}
        values, errors = [], []
        for task in tasks:
            result, primary = by_task.get(task), get_task(task).primary
            values.append(result.metrics[primary] if result else np.nan)
            errors.append(result.metrics.get(f"{primary}_stderr", np.nan) if result else np.nan)  # nan: no bar
        offsets = np.arange(len(tasks)) + (i - (len(runs) - 1) / 2) * width
        label = f"{_label(run.metadata)} ({run.metadata['shots']}-shot, {run.metadata['prompt_format']})"
        axis.bar(offsets, values, width, yerr=errors, capsize=2, label=label)
    axis.set_xticks(np.arange(len(tasks)), [f"{t}\n({get_task(t).primary})" for t in tasks], fontsize=7)
    axis.set_ylim(0, 1)
    axis.set_ylabel("headline metric")
    axis.legend(fontsize=7)
    return save_figure(figure, path)
