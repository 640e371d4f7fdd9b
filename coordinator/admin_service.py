"""The Admin gRPC service on the event loop: start, inspect, pause and stop runs, export
adapters. The guard admits only admin certificates; blocking work runs in worker threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from coordinator.aggregation import native
from coordinator.federation import Federation
from coordinator.guard import Context, refuse
from coordinator.identity import IdentityBook
from coordinator.registry import StreamEnd
from coordinator.rounds import Refusal
from coordinator.run_state import RunRecord, RunSpec
from coordinator.silo_list import run_list, silo_list
from shared.bounded import printable
from shared.payload import PayloadDigest, iter_chunks
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

T = TypeVar("T")
log = logging.getLogger(__name__)


class AdminService(pb_grpc.AdminServicer):
    def __init__(
        self,
        *,
        federation: Federation,
        adapter_config_json: str,
        workers: ThreadPoolExecutor,
        identities: IdentityBook,
    ) -> None:
        self._federation = federation
        self._identities = identities
        self._adapter_config_json = adapter_config_json  # PEFT's adapter_config.json
        self._workers = workers

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, lambda: function(*args))

    async def _change(self, context: Context, change: Callable[[], RunRecord]) -> pb.RunStatus:
        """Apply a run change in a worker thread (it writes checkpoints), answer the status."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._workers, change)
        except Refusal as refusal:
            await refuse(context, refusal.code, str(refusal))
        return self._federation.status()

    async def StartRun(self, request: pb.StartRunRequest, context: Context) -> pb.RunStatus:
        spec = RunSpec.from_proto(request.spec)
        return await self._change(context, lambda: self._federation.start_run(spec))

    async def GetStatus(self, request: pb.StatusRequest, context: Context) -> pb.RunStatus:
        try:
            status: pb.RunStatus = await self._blocking(self._federation.status, request.run_id)
        except Refusal as refusal:
            await refuse(context, refusal.code, str(refusal))
        return status

    def _silo_list(self) -> pb.SiloList:
        run = self._federation.run
        # busy twice as long as a round may last: hung, not slow
        hung = 2 * run.spec.round_deadline_s if run is not None and run.phase.active else 0.0
        return silo_list(self._federation.registry, self._identities, hung_after_s=hung)

    async def ListSilos(self, request: pb.StatusRequest, context: Context) -> pb.SiloList:
        return self._silo_list()

    async def ListRuns(self, request: pb.StatusRequest, context: Context) -> pb.RunList:
        runs: pb.RunList = await self._blocking(run_list, self._federation)
        return runs

    async def RevokeSilo(self, request: pb.SiloRequest, context: Context) -> pb.SiloList:
        name = request.silo_id
        why = printable(request.reason or "revoked by the admin", limit=200)
        try:
            revoked = await self._blocking(self._identities.revoke, name, why)
        except KeyError:
            await refuse(context, grpc.StatusCode.NOT_FOUND, f"no silo {printable(name)!r} joined")
        message = f"the certificate of {name!r} was revoked ({why})"
        self._federation.registry.end(name, StreamEnd(grpc.StatusCode.PERMISSION_DENIED, message))
        self._federation.drop_from_round(name, f"revoked: {why}")
        log.warning("silo %s revoked (%s): %d certificate(s)", name, why, len(revoked))
        return self._silo_list()

    async def RotateSilo(self, request: pb.SiloRequest, context: Context) -> pb.SiloList:
        name = request.silo_id
        try:
            await self._blocking(self._identities.rotate, name)
        except KeyError:
            await refuse(context, grpc.StatusCode.NOT_FOUND, f"no silo {printable(name)!r} joined")
        log.warning("silo %s: the next key it presents will be pinned", name)
        return self._silo_list()

    async def StopRun(self, request: pb.StopRequest, context: Context) -> Any:
        return await self._change(context, self._federation.stop_run)

    async def PauseRun(self, request: pb.StopRequest, context: Context) -> Any:
        return await self._change(context, self._federation.pause_run)

    async def ResumeRun(self, request: pb.StopRequest, context: Context) -> Any:
        return await self._change(context, lambda: self._federation.resume_run(request.run_id))

    async def ExportAdapter(
        self, request: pb.ExportRequest, context: Context
    ) -> AsyncIterator[pb.ExportChunk]:
        """A checkpointed round's adapter with PEFT's config, loadable by PeftModel."""
        run = self._federation.run
        run_id = request.run_id or (run.run_id if run is not None else "")
        if not run_id:
            await refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "no run to export from")
        try:
            round_index, path = self._federation.store.adapter_file(run_id, request.round)
        except FileNotFoundError as exc:
            await refuse(context, grpc.StatusCode.NOT_FOUND, str(exc))
        loop = asyncio.get_running_loop()
        payload = await loop.run_in_executor(self._workers, path.read_bytes)
        yield pb.ExportChunk(
            header=pb.ExportHeader(
                run_id=run_id,
                round=round_index,
                adapter_config_json=self._adapter_config_json,
                adapter=PayloadDigest.of(payload, native.crc32).to_header(),
            )
        )
        for chunk in iter_chunks(payload):
            yield pb.ExportChunk(data=chunk)
