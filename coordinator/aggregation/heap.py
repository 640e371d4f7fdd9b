"""Giving the memory a round frees back to the system, so that the coordinator's RSS does not
climb round after round.

glibc's malloc, left to its defaults, keeps what uploads, downloads and checkpoints free in
many arenas (one per thread that allocates, up to eight per core) and gives little of it back.
Two arenas, chunk-sized buffers taken from them (not mapped and unmapped one by one: a fresh
mapping costs a page fault per 4 KiB, which doubled the coordinator's CPU time per byte
transferred), and every free page given back once a round is over. Elsewhere (another libc)
this does nothing.
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
# Buffers below this come from the arenas: every chunk and message buffer (glibc's largest).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free memory at the top of an arena is given back only above this between rounds' trims, so
# that a round's chunk buffers are reused instead of given back and faulted in again.
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
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
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
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
