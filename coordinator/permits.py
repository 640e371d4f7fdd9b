"""Chunk permits: how many payload chunks the coordinator's event loop holds at once, per kind,
over every silo. Bounding them bounds the memory transfers take however many silos transfer
(and a chunk more for each silo whose network keeps a permit waiting past HOLD_S)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

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


# The longest a transfer holds a shared permit while its silo's network keeps it waiting (a
# 4 MiB chunk takes 2 s at 16 Mbit/s). Past it the permit goes back to whoever waits and the
# transfer goes on without one: a silo that stalls on purpose cannot hold up the others for
# the stall limit (a minute), however many certificates it has, each at most one chunk in
# memory (its gate).
HOLD_S = 2.0


async def within_permit(
    permits: asyncio.Semaphore, work: Awaitable[T], *, keep: bool, hold_s: float = HOLD_S
) -> T:
    """Await `work` holding one of `permits`, for `hold_s` at most: past that the permit goes
    back and `work` goes on without one. With `keep`, a permit is held when this returns (taken
    again if it was given back; the caller releases it); without, none is. On an error or a
    cancellation `work` is cancelled and no permit is kept."""
    await permits.acquire()
    held, kept = True, False
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([task], timeout=hold_s)
        if not done:
            permits.release()
            held = False
            await asyncio.wait([task])
        result = task.result()
        if keep and not held:
            await permits.acquire()
            held = True
        kept = keep
        return result
    finally:
        if not task.done():
            task.cancel()
        if held and not kept:
            permits.release()
