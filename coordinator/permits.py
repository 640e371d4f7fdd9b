"""Chunk permits: how many payload chunks the coordinator's event loop holds at once, per kind,
over every silo. Bounding them bounds the memory transfers take however many silos transfer."""

from __future__ import annotations

import asyncio
import weakref

_PERMITS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def chunk_permits(kind: str, count: int) -> asyncio.Semaphore:
    """The `kind` permits of the running loop (one loop serves one coordinator)."""
    loop = asyncio.get_running_loop()
    kinds = _PERMITS.setdefault(loop, {})
    if kind not in kinds:
        kinds[kind] = asyncio.Semaphore(count)
    return kinds[kind]
