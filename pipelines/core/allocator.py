"""Let glibc keep freed tensor memory for the next forward pass instead of returning it to the system.

A CPU forward pass allocates and frees activations of tens of megabytes each, many times per batch.
glibc serves blocks over its mmap threshold (128 KiB at start, adapting up to 32 MiB) with fresh
``mmap`` pages and gives them back with ``munmap``, so a pass pays again and again for faulting in and
zeroing pages (the likely cause; the speed below is what was measured). Dask workers make this worse:
their nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins the mmap threshold at its 128 KiB
default. Measured with the buildings U-Net++ (Lite0) on 4 x 512^2 windows, one thread: 1.96 s per batch
by default, 2.40 s with Dask's setting, 1.48 s with the heap kept (2 threads: 1.03 -> 0.80 s; bf16:
0.93 -> 0.76 s), for about 5% more peak memory, which the process holds until it exits, as PyTorch's
CUDA allocator does on a GPU.

Dask runs tasks on a worker thread, whose own glibc arena hands blocks over 64 MiB to ``mmap`` whatever
the threshold (1.9-2.1 s per batch there with the thresholds set). :data:`WORKER_ENVIRON`, set before a
worker process starts, keeps every thread on the main arena as well (1.5-1.6 s); workers one starts
oneself for ``--scheduler`` want the same variables.

Only glibc on Linux has ``mallopt``; elsewhere :func:`retain_freed_memory` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
import sys

__all__ = ["WORKER_ENVIRON", "retain_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # never shrink the heap's top (mallopt takes an int)
WORKER_ENVIRON = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
                  "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}  # glibc reads these when a process starts


@functools.cache
def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so freed tensor buffers are reused (once per process; also
    in a Dask worker, after its nanny's setting). True when applied, False where there is no glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    if not applied:
        log.debug("mallopt refused the thresholds; glibc's defaults stay")
    return applied
