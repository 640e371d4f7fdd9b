"""within_permit: a permit held while the work waits, for HOLD_S at most; kept on return only
when asked; never kept after an error or a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.permits import within_permit


async def _slow(seconds: float, value: str = "done") -> str:
    await asyncio.sleep(seconds)
    return value


def test_a_quick_work_keeps_its_permit_only_when_asked() -> None:
    async def scenario() -> None:
        permits = asyncio.Semaphore(1)
        assert await within_permit(permits, _slow(0.0), keep=False, hold_s=1.0) == "done"
        assert not permits.locked()
        assert await within_permit(permits, _slow(0.0), keep=True, hold_s=1.0) == "done"
        assert permits.locked()  # the caller's to give back

    asyncio.run(scenario())


def test_a_slow_work_gives_its_permit_back_to_whoever_waits_and_takes_one_again() -> None:
    async def scenario() -> None:
        permits = asyncio.Semaphore(1)
        order: list[str] = []

        async def slow() -> None:
            await within_permit(permits, _slow(0.5), keep=True, hold_s=0.05)
            order.append("slow")  # holding a permit again
            assert permits.locked()
            permits.release()

        async def quick() -> None:
            await asyncio.sleep(0.01)  # queued behind the slow one's permit
            await within_permit(permits, _slow(0.0), keep=False, hold_s=1.0)
            order.append("quick")

        await asyncio.gather(slow(), quick())
        assert order == ["quick", "slow"]  # the quick one did not wait the slow one out
        assert not permits.locked()

    asyncio.run(scenario())


def test_an_error_or_a_cancellation_keeps_no_permit_and_stops_the_work() -> None:
    async def failing() -> None:
        await asyncio.sleep(0.1)
        raise ValueError("refused")

    async def scenario() -> None:
        permits = asyncio.Semaphore(1)
        for hold_s in (1.0, 0.01):  # failing while it holds the permit, and after
            with pytest.raises(ValueError, match="refused"):
                await within_permit(permits, failing(), keep=True, hold_s=hold_s)
            assert not permits.locked()
        started = asyncio.Event()
        stopped = asyncio.Event()

        async def watched() -> None:
            started.set()
            try:
                await asyncio.sleep(10)
            finally:
                stopped.set()

        for hold_s in (10.0, 0.01):
            started.clear()
            stopped.clear()
            waiting = asyncio.ensure_future(
                within_permit(permits, watched(), keep=True, hold_s=hold_s)
            )
            await started.wait()
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await asyncio.wait_for(stopped.wait(), 1.0)
            assert not permits.locked()

    asyncio.run(scenario())
