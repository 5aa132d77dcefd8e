"""What every benchmark script shares: the best of several timed runs, and one JSON line per figure.

The scripts import it as a sibling module (``python benchmarks/bench_x.py`` puts this folder first
on ``sys.path``); it is not part of the library.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lightning.pytorch.callbacks import Callback

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


class StepTimer(Callback):
    """Wall time and real (unpadded) tokens of each training batch: forward, backward and
    optimiser step. The first step (warm-up, or compiling) is reported apart and left out of the
    rates.

    Parameters
    ----------
    real_tokens
        ``(trainer, module, batch) -> int``: how many of the batch's tokens are not padding.
    """

    def __init__(self, real_tokens: Callable[[Any, Any, dict[str, Any]], int]) -> None:
        self.real_tokens = real_tokens
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: dict[str, Any], batch_index: int) -> None:
        self.tokens.append(self.real_tokens(trainer, module, batch))
        self._started = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.seconds.append(time.perf_counter() - self._started)

    @property
    def tokens_per_second(self) -> float:
        """Real tokens per second over the steps after the first."""
        return sum(self.tokens[1:]) / sum(self.seconds[1:])

    def figures(self) -> dict[str, float]:
        """The figures a benchmark line prints: the rate, the median step after the first, and
        the first step, rounded."""
        return {
            "first_step_seconds": round(self.seconds[0], 1),
            "seconds_per_step": round(statistics.median(self.seconds[1:]), 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
        }
