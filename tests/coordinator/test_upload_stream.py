"""An upload's stream of chunks into its receiver: when the upload is cancelled (its silo went
away), the handler does not return, and so cannot abandon the update's live fold or hand its
spool back, while the worker thread is still writing the last chunk."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from coordinator.upload import _stream_into
from shared.wire.v1 import federation_pb2 as pb


class VanishingSilo:
    """Stands in for the server side of an upload stream, to reach the moment precisely:
    three data chunks, then nothing (the silo is gone, and the handler is cancelled)."""

    def __init__(self) -> None:
        self._chunks = [b"x" * 1000, b"y" * 1000, b"z" * 1000]

    async def read(self) -> Any:
        if self._chunks:
            return pb.UpdateChunk(data=self._chunks.pop(0))
        await asyncio.Event().wait()  # never comes
        raise AssertionError("unreachable")


class SlowReceiver:
    """Its second write blocks until released (a live fold's long catch-up)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.second_started = threading.Event()
        self.release = threading.Event()

    def write(self, chunk: bytes) -> None:
        if chunk.startswith(b"y"):
            self.second_started.set()
            assert self.release.wait(10)
        self.events.append(f"wrote {chunk[:1].decode()}")


def test_a_cancelled_upload_returns_only_once_its_last_write_is_done() -> None:
    receiver = SlowReceiver()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def blocking(function: Any, *args: Any) -> Any:
            return loop.run_in_executor(None, function, *args)

        upload = asyncio.ensure_future(
            _stream_into(
                VanishingSilo(),  # type: ignore[arg-type]
                receiver,  # type: ignore[arg-type]
                stall_s=60,
                silo_id="silo-a",
                blocking=blocking,
            )
        )
        assert await loop.run_in_executor(None, receiver.second_started.wait, 10)
        await asyncio.sleep(0.05)  # the handler has the third chunk, and waits for the second
        upload.cancel()
        await asyncio.sleep(0.3)
        assert not upload.done()  # the worker thread is still in the second write
        assert receiver.events == ["wrote x"]
        receiver.release.set()
        with pytest.raises(asyncio.CancelledError):
            await upload
        receiver.events.append("returned")

    asyncio.run(scenario())
    assert receiver.events == ["wrote x", "wrote y", "returned"]
