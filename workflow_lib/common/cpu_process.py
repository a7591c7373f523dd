"""Process settings for torch (and FAISS) on the CPU, applied by the scripts before they import either.

- OpenMP threads sleep when idle instead of spinning: on a shared machine spinning threads fight the other processes
  for the cores (training measured 14 -> 57 pairs/s with 2 threads at load average 6).
- glibc malloc keeps torch's large freed buffers. By default it serves big allocations (activations, gradients:
  megabytes each) with fresh ``mmap`` calls and returns them with ``munmap`` when freed, so every training step
  page-faults and zero-fills its whole working set again. On this project's 2-core machine that kernel work was
  half the CPU time of a training step; raising the mmap and trim thresholds keeps the freed memory in the heap for
  the next step and gave 1.4-1.6x more training pairs per second (bench/README.md). The cost is that the process
  keeps its peak memory until it exits, which is what a training or extraction job wants anyway. ``mallopt``
  changes the running process (unlike the ``MALLOC_*_`` environment variables, which only work if set before the
  interpreter starts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
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


def setup_cpu_process(keep_buffers: bool = False) -> None:
    """Call first thing, before torch or faiss is imported (OpenMP reads its settings when it loads).

    ``keep_buffers``: also :func:`keep_freed_memory`, for processes that allocate the same large tensors over and
    over (training, extraction).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if keep_buffers:
        keep_freed_memory()
