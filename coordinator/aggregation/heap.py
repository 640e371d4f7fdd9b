"""Giving the memory a round frees back to the system, so that the coordinator's RSS does not
climb round after round.

glibc's malloc, left to its defaults, keeps what uploads, downloads and checkpoints free: each
of the many threads that allocate gets an arena of its own, and after a large buffer is freed
malloc raises its mmap threshold to that size, so that later multi-megabyte chunks come from
arenas that never shrink. Measured with 32 silos at once and a 48 MiB adapter: the peak went
from 1.5 GB to under 0.9 GB with the settings below. Elsewhere (another libc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Buffers from 128 KiB up are mapped on their own and unmapped when freed (the default, fixed
# here so that it never rises); free memory above it at the top of a heap is returned.
THRESHOLD_BYTES = 128 * 1024
ARENAS = 2  # the coordinator's work is a few threads at a time on a couple of cores


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


def limit_retention() -> None:
    """Set once at start-up, before the worker threads allocate."""
    libc = _libc()
    if libc is None:
        return
    for parameter, value in (
        (M_MMAP_THRESHOLD, THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, THRESHOLD_BYTES),
        (M_ARENA_MAX, ARENAS),
    ):
        if libc.mallopt(parameter, value) != 1:
            log.warning(
                "mallopt(%d, %d) refused; memory may be kept after rounds", parameter, value
            )


def release_freed() -> None:
    """Return the free pages of every arena to the system (after a round)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
