"""Torch's thread count, kept as the caller set it across scanpy work.

numba sets OpenMP's thread count to every core the first time it compiles a kernel (scanpy's
preprocessing does, lazily), and torch shares that OpenMP runtime: a process told to use one
thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) silently goes on with all of them,
which oversubscribes the cores whenever several such processes share a machine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["torch_threads_kept"]


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Put ``torch.get_num_threads()`` back to its value on entry when the block exits.

    Usable as a decorator. Never imports torch: where it is not loaded yet there is no thread
    count to keep.
    """
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
