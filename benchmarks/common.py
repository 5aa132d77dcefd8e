"""What every benchmark script shares: the best of several timed runs, and one JSON line per figure.

The scripts import it as a sibling module (``python benchmarks/bench_x.py`` puts this folder first
on ``sys.path``); it is not part of the library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

Result = TypeVar("Result")
NO_BASELINE = object()
"""``emit``'s ``ratio`` for a figure without a baseline: the line then has no ``ratio`` key."""


def emit(name: str, ratio: float | object | None = NO_BASELINE, **figures: object) -> None:
    """Print one figure as a JSON line: its name, its ratio to the baseline timed in the same run
    (rounded to three places; ``None``, written as ``null``, where the baseline is zero) and the
    raw figures behind it."""
    record: dict[str, object] = {"benchmark": name}
    if ratio is not NO_BASELINE:
        record["ratio"] = None if ratio is None else round(ratio, 3)
    print(json.dumps(record | figures), flush=True)


def best_of(fn: Callable[[], Result], repeats: int = 3, warm_up: bool = True) -> tuple[float, Result]:
    """The shortest wall time of ``repeats`` calls of ``fn`` (after one untimed call when
    ``warm_up``), and what the last call returned: the minimum is the run least disturbed by the
    rest of the machine."""
    if warm_up:
        fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result  # type: ignore[return-value]


def best_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """:func:`best_of`'s time alone, after a warm-up call."""
    return best_of(fn, repeats)[0]
