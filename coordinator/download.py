"""A round's adapter download: the chunks cut once per round, written to each silo under the
loop's download permits, and a silo that stops reading abandoned after a stall."""

from __future__ import annotations

import asyncio

import grpc

from coordinator.guard import Context, refuse
from coordinator.permits import chunk_permits, silo_gate, within_permit
from coordinator.rounds import OpenRound
from shared.wire.v1 import federation_pb2 as pb

# Download chunks being written at once, over all downloads: each is a 4 MiB message and its
# serialised copy until gRPC has sent it. 32 silos downloading at once held ~5 adapters more
# without a bound; 8 keep both cores busy.
CHUNKS_IN_FLIGHT = 8


async def send_download(
    context: Context, open_round: OpenRound, *, silo_id: str, stall_s: float
) -> None:
    """Write the header, then every chunk; each write takes the silo's gate and a shared
    permit until gRPC has sent it, or HOLD_S if the silo reads slower (the permit goes back and
    the write waits on without it: one message more in memory per such silo)."""
    await context.write(pb.PayloadChunk(header=open_round.digest.to_header()))
    permits = chunk_permits("download", CHUNKS_IN_FLIGHT)
    own = silo_gate("download", silo_id)
    for message in open_round.messages:  # serialised once per round, written as they are
        async with own:
            await within_permit(permits, _write(context, message, silo_id, stall_s), keep=False)


async def _write(context: Context, message: bytes, silo_id: str, stall_s: float) -> None:
    try:
        await asyncio.wait_for(context.write(message), stall_s)
    except asyncio.TimeoutError:
        await refuse(
            context,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"download by {silo_id!r} read nothing for {stall_s:g} s; abandoned",
        )
