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


_SILO_GATES: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Semaphore]
] = weakref.WeakKeyDictionary()


def silo_gate(kind: str, silo_id: str) -> asyncio.Semaphore:
    """A silo's own gate in front of the shared `kind` permits: however many transfers one
    certificate has open, one of them at a time waits on the network holding a shared
    permit, so a silo that stalls on purpose holds one shared permit at most (one gate per
    identity; identities are the federation's issued certificates)."""
    loop = asyncio.get_running_loop()
    gates = _SILO_GATES.setdefault(loop, {})
    return gates.setdefault((kind, silo_id), asyncio.Semaphore(1))
