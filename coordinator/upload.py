"""Receiving one update stream: header, data chunks under a stall deadline, then acceptance.

Runs on the event loop; checking, measuring and spooling each chunk, and folding, run in
worker threads. The receipt is sent once the update is verified, measured and spooled; its
fold follows, unless the update was folded live as it arrived (while it was next in the
fold's order). Every refusal answers with its exact status code and is counted with its
reason; a refused update that was being folded live is rebuilt out of the round's sums.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from coordinator.aggregation.live import LiveFold
from coordinator.aggregation.receiver import UpdateReceiver
from coordinator.aggregation.spool import SpoolPool
from coordinator.checkpoint import no_room
from coordinator.federation import Federation
from coordinator.guard import Context, refuse
from coordinator.permits import chunk_permits, silo_gate, within_permit
from coordinator.rounds import OpenRound, Refusal
from shared.bounded import printable
from shared.errors import PayloadError, UpdateRejected
from shared.payload import PayloadDigest
from shared.wire.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)

Blocking = Callable[..., Awaitable[Any]]
# Upload chunks held at once, over all uploads: each is a message of up to 4 MiB in gRPC's
# buffers, then in Python, then being hashed, measured and spooled. Bounding them bounds the
# memory uploads take however many silos upload at once, and 4 keep both cores busy.
CHUNKS_IN_FLIGHT = 4
# Folds running after their receipts were sent.
_FOLDS: set[asyncio.Future[Any]] = set()
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
    live: LiveFold | None = None
    pool = SpoolPool.at(incoming)
    path = pool.take()
    kept = False
    spool_bytes = header.payload.total_bytes  # until the run's update shape says
    try:
        open_round = federation.round_for_task(header.task_id, silo_id)
        federation.check_update_header(open_round, silo_id, header)
        live = federation.live_fold(open_round, silo_id, header)
        shape = federation.update_shape()
        spool_bytes = shape.spool_bytes
        with pool.open(path) as spool:
            receiver = UpdateReceiver(
                shape=shape,
                announced=PayloadDigest.from_header(header.payload),
                spool=spool,
                path=path,
                live=live,
            )
            trailer = await _stream_into(
                context, receiver, stall_s=stall_s, silo_id=silo_id, blocking=blocking
            )
            update = await blocking(receiver.finish, trailer)
        federation.admit_update(open_round=open_round, silo_id=silo_id, header=header)
        kept = True
        _in_background(
            blocking(
                federation.fold_update,
                open_round=open_round,
                silo_id=silo_id,
                header=header,
                update=update,
                live=live,
            )
        )
        return pb.UploadReceipt(task_id=header.task_id, bytes_received=update.nbytes)
    except Refusal as refusal:
        federation.reject(open_round, refusal.reason)
        await refuse(context, refusal.code, str(refusal))
    except OSError as exc:
        if not no_room(exc):
            raise
        federation.reject(open_round, "disk_full")
        path.unlink(missing_ok=True)  # room for the round's checkpoint; not kept for reuse
        pool.drain()
        full = federation.spool_full(open_round, incoming, spool_bytes)
        log.error("update from %s refused: %s; the run pauses until there is room", silo_id, full)
        await refuse(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"update from {silo_id!r} refused: the coordinator's {full}; the run pauses until "
            "there is room",
        )
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
        if not kept:
            if live is not None and open_round is not None and open_round.fold is not None:
                open_round.fold.abandon(live)  # what it added is rebuilt without it
            pool.give_back(path)


def _in_background(work: Awaitable[Any]) -> None:
    """Run `work` after the receipt is sent; the round's close waits for it (its `folding`)."""
    task = asyncio.ensure_future(work)
    _FOLDS.add(task)  # the loop keeps only a weak reference to a task
    task.add_done_callback(_FOLDS.discard)


async def _stream_into(
    context: Context,
    receiver: UpdateReceiver,
    *,
    stall_s: float,
    silo_id: str,
    blocking: Blocking,
) -> int | None:
    """Feed the data chunks to the receiver (in a worker thread, one at a time, while the
    next chunk arrives); return the trailer's CRC-32 (None without one).

    Each chunk takes a permit before it is read and gives it back once the receiver is done
    with it, so that one upload still reads a chunk while the last is processed, and many
    uploads together hold CHUNKS_IN_FLIGHT chunks, and one more for each silo whose network
    kept its permit waiting past HOLD_S (the permit went back; the chunk, once it came, took
    one again). A chunk waits for its silo's gate first: a silo's uploads wait on its network
    one at a time."""
    gate = chunk_permits("upload", CHUNKS_IN_FLIGHT)
    own = silo_gate("upload", silo_id)
    pending: asyncio.Future[Any] | None = None
    trailer: pb.PayloadTrailer | None = None
    try:
        while True:
            async with own:  # one wait on this silo's network at a time
                message = await within_permit(
                    gate, _next(context, stall_s=stall_s, silo_id=silo_id), keep=True
                )
            part = None if message is EOF else message.WhichOneof("part")
            data = message.data if part == "data" and trailer is None else None
            if data is None:
                gate.release()
                if message is EOF:
                    break
                if part == "trailer" and trailer is None:
                    trailer = message.trailer
                    continue
                raise PayloadError(f"unexpected {part} inside an update stream")
            del message  # its buffer: only `data` is needed now
            try:
                if pending is not None:  # the last chunk's write: a refusal ends the upload here
                    await asyncio.shield(pending)  # (cancelled, it still waits: see below)
            except BaseException:
                gate.release()  # this chunk's permit: it will never be written
                raise
            pending = asyncio.ensure_future(blocking(receiver.write, data))
            pending.add_done_callback(lambda _: gate.release())
            del data  # held by the write until it is done, and not a moment longer
    finally:
        if pending is not None:  # the worker thread is done with the receiver, even when the
            await asyncio.wait([pending])  # upload is cancelled: only then may it be abandoned
            pending.result()  # the last write's refusal
    if trailer is None:
        return None
    if trailer.sha256 and not trailer.HasField("crc32"):
        raise PayloadError(
            "the update's trailer carries a SHA-256 but no CRC-32, the check of a streamed "
            "update: upgrade the silo agent"
        )
    return trailer.crc32 if trailer.HasField("crc32") else None
