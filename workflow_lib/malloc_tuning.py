"""Keep glibc malloc from handing torch's large CPU buffers back to the kernel after every step.

By default glibc serves big allocations (activations, gradients: megabytes each) with fresh ``mmap`` calls and
returns them with ``munmap`` when freed, so every training step page-faults and zero-fills its whole working set
again. On this project's 2-core machine that kernel work was half the CPU time of a training step; raising the
mmap and trim thresholds keeps the freed memory in the heap for the next step and gave 1.4-1.6x more training
pairs per second (bench/README.md). The cost is that the process keeps its peak memory until it exits, which is
what a training or extraction job wants anyway.

``mallopt`` changes the running process (unlike the ``MALLOC_*_`` environment variables, which only work if set
before the interpreter starts), so a Snakemake script or the CLI can call :func:`keep_freed_memory` first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems (4 * 1024 * 1024 * sizeof(long)); larger values are refused.
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 ** 3
TOP_PAD = 512 * 1024 ** 2


def keep_freed_memory() -> bool:
    """Raise glibc's mmap / trim thresholds for this process; False (and nothing changed) where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        log.debug("no glibc mallopt; malloc left at its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # int parameters: TRIM_THRESHOLD and TOP_PAD are clipped to what an int holds.
    int_max = 2 ** 31 - 1
    ok = all(mallopt(param, min(value, int_max)) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not ok:
        log.debug("glibc refused a mallopt setting; malloc partly at its defaults")
    return ok
