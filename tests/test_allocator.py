"""``allocator.keep_freed_memory``: glibc's malloc keeps a large freed block for reuse once asked."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Run in a child process: the setting is process-wide and lasting, so it must not reach the test session.
PROBE = """
import ctypes
import ctypes.util
import resource

import neuroomics_bridge.cli  # importing the library (and the command line) must change nothing
from neuroomics_bridge.allocator import keep_freed_memory

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 64 << 20

def page_faults_of_a_fresh_block() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)  # written, so that every new page faults in
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = min(page_faults_of_a_fresh_block() for _ in range(3))
applied = keep_freed_memory()
print(plain, applied, min(page_faults_of_a_fresh_block() for _ in range(3)))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_a_freed_block_is_reused_once_asked_and_not_before() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300)
    plain, applied, kept = out.stdout.split()
    assert applied == "True"
    assert int(plain) >= (64 << 20) // 65536, out.stdout  # a new mapping each time: a fault per page (4 or 64 KiB)
    assert int(kept) * 10 < int(plain), out.stdout
