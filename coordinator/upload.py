"""Receiving one update stream: header, data chunks under a stall deadline, then acceptance.

Runs on the event loop; hashing and writing each chunk, validation and folding run in worker
threads. Every refusal answers with its exact status code and is counted with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from coordinator.federation import Federation
from coordinator.guard import Context, refuse
from coordinator.rounds import OpenRound, Refusal
from shared.bounded import printable
from shared.errors import PayloadError, UpdateRejected
from shared.payload import PayloadDigest, PayloadSink
from shared.wire.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)

Blocking = Callable[..., Awaitable[Any]]
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # end of a request stream


async def _next(context: Context, *, stall_s: float, silo_id: str) -> Any:
    """The next message of the stream (EOF at its end), or a refusal if the silo
    sends nothing for `stall_s` seconds: a stalled upload must not hold its slot forever."""
    try:
        return await asyncio.wait_for(context.read(), timeout=stall_s)
    except asyncio.TimeoutError:
        await refuse(
            context,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"upload from {silo_id!r} sent nothing for {stall_s:g} s; abandoned",
        )


async def receive_update(
    context: Context,
    *,
    federation: Federation,
    silo_id: str,
    incoming: Path,
    stall_s: float,
    blocking: Blocking,
) -> pb.UploadReceipt:
    first = await _next(context, stall_s=stall_s, silo_id=silo_id)
    if first is EOF or first.WhichOneof("part") != "header":
        await refuse(
            context, grpc.StatusCode.INVALID_ARGUMENT, "an update stream must start with its header"
        )
    header: pb.UpdateHeader = first.header
    open_round: OpenRound | None = None
    path: Path | None = None
    try:
        open_round = federation.round_for_task(header.task_id, silo_id)
        federation.check_update_header(open_round, silo_id, header)
        with tempfile.NamedTemporaryFile(
            prefix="update-", suffix=".safetensors", dir=incoming, delete=False
        ) as out:
            path = Path(out.name)
            sink = PayloadSink(
                expected=PayloadDigest(header.payload.total_bytes, header.payload.sha256),
                out=out,
                max_bytes=2 * open_round.digest.total_bytes + (1 << 20),
            )
            while (message := await _next(context, stall_s=stall_s, silo_id=silo_id)) is not (EOF):
                if message.WhichOneof("part") != "data":
                    raise PayloadError("a second header inside one update stream")
                await blocking(sink.write, message.data)
            sink.finish()
        await blocking(
            federation.accept_update,
            open_round=open_round,
            silo_id=silo_id,
            header=header,
            path=path,
            nbytes=sink.received,
        )
        return pb.UploadReceipt(task_id=header.task_id, bytes_received=sink.received)
    except Refusal as refusal:
        federation.reject(open_round, "refused")
        await refuse(context, refusal.code, str(refusal))
    except (PayloadError, UpdateRejected) as exc:
        reason = exc.reason if isinstance(exc, UpdateRejected) else "payload"
        federation.reject(open_round, reason)
        where = f"round {open_round.index}" if open_round else "no round"
        log.warning("update from %s refused (%s): %s", silo_id, where, exc)
        await refuse(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"update from {silo_id!r} for {where} refused: {printable(str(exc), limit=300)}",
        )
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
