"""Progress bars that show on a terminal and stay quiet in logs, CI and notebooks' files."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "quiet_transformers_progress", "silenced"]

T = TypeVar("T")
_SILENCED: contextvars.ContextVar[bool] = contextvars.ContextVar("neuroomics_bridge_progress_silenced", default=False)


def progress(items: Iterable[T], *, desc: str, show: bool | None = None, unit: str = "it") -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar that disappears when done.

    Parameters
    ----------
    items
        What to iterate over.
    desc, unit
        The bar's label and unit.
    show
        ``True`` / ``False`` force the bar on or off; ``None`` shows it only when stderr is a
        terminal, and never inside :func:`silenced`.
    """
    if show is None and _SILENCED.get():
        show = False
    return tqdm(items, desc=desc, unit=unit, disable=None if show is None else not show, leave=False)


@contextlib.contextmanager
def silenced(silence: bool = True) -> Iterator[None]:
    """Within the block (where ``silence``), bars that decide for themselves (``show=None``) stay off.

    A function asked for ``show_progress=False`` wraps its work in this, so the bars of what it
    calls (encoding, generation) stay off too, not only its own.
    """
    token = _SILENCED.set(_SILENCED.get() or silence)
    try:
        yield
    finally:
        _SILENCED.reset(token)


@contextlib.contextmanager
def quiet_transformers_progress() -> Iterator[None]:
    """Silence transformers' loading and conversion bars when nobody watches a terminal."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
