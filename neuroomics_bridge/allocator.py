"""glibc's malloc told to keep large freed blocks for reuse, for processes that train or encode.

glibc hands an allocation above its mmap threshold (128 KiB at first, raised on the fly up to
32 MiB) to a fresh ``mmap`` and gives it back with ``munmap`` when freed, and trims freed heap
memory back to the system. A training step through the backbone allocates and frees activations
of tens to hundreds of MiB, so each of them comes back as new pages that fault in, zeroed, at
their first write: 2.5 million page faults in 14 steps of the demo's prefix stage. With both
thresholds raised most of those blocks stay in the heap and are reused (0.5 million faults).
Measured on an Intel Xeon with AMX, 2 cores, 2026-12-05 (README, "Performance"): the same 14
steps in 26.0–27.2 s against 28.2–33.2 s, and ``nob demo`` in 417 s against 452 s (system time
7 s against 50 s), every metric identical. The price is that memory the process frees stays
mapped (its resident size keeps its peak), so ``nob`` sets it for its own process and scripts
may opt in; importing the library changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Keep freed blocks of up to ``limit`` bytes in this process for reuse (glibc only).

    Sets glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to ``limit``, in that order: the
    trim threshold alone would fix the mmap threshold at its 128 KiB start and make things
    slower, so it is only set once the first succeeded. Process-wide and lasting; call it at
    the start of a script that trains or encodes.

    Parameters
    ----------
    limit
        Bytes: larger blocks are still mapped and unmapped one by one.

    Returns
    -------
    bool
        Whether both settings took effect (``False`` on other C libraries and systems, where
        nothing is changed).
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt  # musl and others have no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(limit, 2**31 - 1)
    return mallopt(_M_MMAP_THRESHOLD, value) == 1 and mallopt(_M_TRIM_THRESHOLD, value) == 1
