"""Choose among equivalent kernels by timing them on this machine once, and keep the choice.

Which of two exact implementations runs faster (SDPA's fused attention or the plain matmul one,
oneDNN or ATen for a bf16 matmul) depends on the CPU, the torch build and the tensor shapes:
what wins on an AMD EPYC can lose on an Intel Xeon with AMX. :func:`calibrated_choice` times the
candidates on a representative workload the first time a task is met and records the winner in
``<cache>/kernels.json``, keyed by the CPU model and instruction set, the torch and transformers
versions, the thread count and the task's own context (model shape, dtype). The first later
process to meet the key times the candidates once more and keeps each one's best time over both
timings (a shared machine's slow spell during the first timing no longer decides for good);
after that every call, in any process, reads the choice back, so seeded runs on one machine keep
taking the same path. Any change of key (another CPU, an upgraded torch) times the candidates
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from neuroomics_bridge.io import atomic_write_text, cache_root

__all__ = ["CALIBRATION_FILE", "calibrated_choice", "cpu_model", "machine_key", "random_rows", "run_rows"]

CALIBRATION_FILE = "kernels.json"
CONFIRMING_TIMINGS = 2
"""Timings, each in another process, that a cached choice rests on before it is only read back."""

_timed_here: dict[tuple[str, str], str] = {}  # (cache file, key digest) -> the choice this process timed


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model as ``lscpu`` names it (``/proc/cpuinfo``'s model name; on Arm, which has
    none, its implementer and part numbers), or the platform's processor string."""
    if cpuinfo.is_file():
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
        if fields.get("model name"):
            return fields["model name"]
        if fields.get("CPU implementer") and fields.get("CPU part"):
            return f"{platform.machine()} implementer {fields['CPU implementer']} part {fields['CPU part']}"
    return platform.processor() or platform.machine()


def machine_key() -> dict[str, str]:
    """What a kernel timing depends on besides the workload: CPU, library versions, threads.

    The CPU is its model name and the widest instruction set PyTorch dispatches to on it
    (``"AVX2"``, ``"AVX512"``, ...): virtual machines name an AVX2-only AMD EPYC (Zen 3) and one
    with AVX512-BF16 alike, ``"AMD EPYC"``, and a home folder shared between such nodes must not
    hand one the other's choices.
    """
    import transformers

    return {
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": str(torch.get_num_threads()),
    }


def calibrated_choice(
    task: str,
    candidates: Mapping[str, Callable[[], object]],
    *,
    context: Mapping[str, str] | None = None,
    repeats: int = 3,
    path: str | os.PathLike[str] | None = None,
) -> str:
    """The fastest of ``candidates`` for ``task`` on this machine, timed once and then cached.

    Parameters
    ----------
    task
        What is being chosen (``"training-attention"``); part of the key.
    candidates
        Name -> a function running the workload once with that implementation. Each is run once
        to warm up, then ``repeats`` times, the candidates taking turns; the smallest time counts.
    context
        The rest of the key: whatever else decides the winner (model shape, dtype, device).
    repeats
        Timed runs per candidate.
    path
        The cache file (default ``<cache>/kernels.json``).

    Returns
    -------
    str
        The winning candidate's name: read from the cache when this key was timed before (in
        this process, or :data:`CONFIRMING_TIMINGS` times in others); else timed, the best
        times merged with the cached ones.
    """
    if not candidates:
        raise ValueError(f"{task}: no candidates to choose from")
    file = Path(path) if path is not None else cache_root() / CALIBRATION_FILE
    key = {"task": task, **machine_key(), **dict(context or {})}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    if _timed_here.get((str(file), digest)) in candidates:
        return _timed_here[(str(file), digest)]
    entry = _read(file).get(digest, {})
    cached = entry.get("choice") in candidates
    if cached and entry.get("timings", 1) >= CONFIRMING_TIMINGS:
        return entry["choice"]
    earlier = entry.get("seconds", {}) if cached else {}
    timed = _best_times(candidates, repeats)
    seconds = {name: min(t, earlier.get(name, float("inf"))) for name, t in timed.items()}
    choice = min(seconds, key=seconds.__getitem__)
    entries = _read(file)  # another process may have written meanwhile: keep its entries
    timings = entry.get("timings", 1) + 1 if cached else 1
    entries[digest] = {"key": key, "choice": choice, "seconds": seconds, "timings": timings}
    _timed_here[(str(file), digest)] = choice
    try:
        atomic_write_text(file, json.dumps(entries, indent=1, sort_keys=True))
    except OSError as error:  # a read-only or missing cache folder: the choice still holds in this process
        warnings.warn(f"{file}: kernel calibration not cached ({error}); {task} uses {choice!r}", stacklevel=2)
    return choice


def random_rows(widths: Iterable[int], rows: int, dtype: torch.dtype) -> dict[int, torch.Tensor]:
    """Seeded random inputs of ``rows`` token rows, one per input width, for a timed workload.

    Layers of one width share their input, as a decoding step's stacked sibling layers do.
    """
    generator = torch.Generator().manual_seed(0)
    return {width: torch.randn(rows, width, generator=generator).to(dtype) for width in sorted(set(widths))}


def run_rows(layers: Iterable[torch.nn.Module], inputs: Mapping[int, torch.Tensor]) -> None:
    """Run each of ``layers`` once on the input of its width (``inputs[layer.in_features]``),
    without autograd: the workload a kernel or dtype candidate is timed on."""
    with torch.inference_mode():
        for layer in layers:
            layer(inputs[layer.in_features])


def _best_times(candidates: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each candidate's smallest time over ``repeats`` rounds in which the candidates take turns.

    Taking turns (first warming each up once, then one run of each per round, the order rotated
    every round) keeps a slow spell of a shared machine from landing on one candidate only (on
    an Intel Xeon, 2026-12-06, such a spell tripled every time while a choice was being made).
    """
    names = list(candidates)
    for name in names:
        candidates[name]()  # warm-up: first-call allocations and kernel selection
    best = dict.fromkeys(names, float("inf"))
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            candidates[name]()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def _read(file: Path) -> dict[str, dict]:
    """The cache's entries by key digest; a file that cannot be read or parsed counts as empty,
    and an entry of another shape (edited by hand, an older layout) as absent, with a warning."""
    if not file.is_file():
        return {}
    try:
        entries = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        warnings.warn(f"{file}: unreadable kernel calibration ({error}); timing again", stacklevel=3)
        return {}
    if not isinstance(entries, dict):
        warnings.warn(
            f"{file}: expected a JSON object of entries, got {type(entries).__name__}; timing again", stacklevel=3
        )
        return {}
    malformed = [digest for digest, entry in entries.items() if not _well_formed(entry)]
    if malformed:
        warnings.warn(
            f"{file}: {len(malformed)} malformed kernel calibration entries ignored; timing again", stacklevel=3
        )
    return {digest: entry for digest, entry in entries.items() if digest not in malformed}


def _well_formed(entry: object) -> bool:
    """Whether a cache entry has the shape :func:`calibrated_choice` writes."""
    if not isinstance(entry, dict) or not isinstance(entry.get("choice"), str):
        return False
    seconds, timings = entry.get("seconds", {}), entry.get("timings", 1)
    numbers = isinstance(seconds, dict) and all(isinstance(t, int | float) for t in seconds.values())
    return numbers and isinstance(timings, int)
