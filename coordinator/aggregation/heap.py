"""Giving the memory a round frees back to the system, so that the coordinator's RSS does not
climb round after round.

glibc's malloc, left to its defaults, keeps what uploads, downloads and checkpoints free in
many arenas (one per thread that allocates, up to eight per core) and gives little of it back.
Two arenas, and every free page given back once a round is over. The mmap threshold keeps its
default (it rises to the size of the chunk buffers, which are then reused from the arenas):
fixed at 128 KiB, every 4 MiB buffer would be mapped afresh, a page fault per 4 KiB, which
cost about 0.8 s of the coordinator's CPU per 600 MB moved (measured). Elsewhere (another
libc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
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
    if libc.mallopt(M_ARENA_MAX, ARENAS) != 1:
        log.warning("mallopt refused %d arenas; memory may be kept after rounds", ARENAS)


def release_freed() -> None:
    """Return the free pages of every arena to the system (after a round)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
