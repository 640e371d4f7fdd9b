"""The Admin gRPC service on the event loop: start, inspect, pause and stop runs, export
adapters. The guard admits only admin certificates; blocking work runs in worker threads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from coordinator.federation import Federation
from coordinator.guard import Context, refuse
from coordinator.rounds import Refusal
from coordinator.run_state import RunRecord, RunSpec
from shared.payload import PayloadDigest, iter_chunks
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

T = TypeVar("T")


class AdminService(pb_grpc.AdminServicer):
    def __init__(
        self,
        *,
        federation: Federation,
        adapter_config_json: str,
        workers: ThreadPoolExecutor,
    ) -> None:
        self._federation = federation
        self._adapter_config_json = adapter_config_json  # PEFT's adapter_config.json
        self._workers = workers

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
        return self._federation.status()

    async def ListSilos(self, request: pb.StatusRequest, context: Context) -> pb.SiloList:
        return pb.SiloList(silos=self._federation.registry.snapshot())

    async def StopRun(self, request: pb.StopRequest, context: Context) -> Any:
        return await self._change(context, self._federation.stop_run)

    async def PauseRun(self, request: pb.StopRequest, context: Context) -> Any:
        return await self._change(context, self._federation.pause_run)

    async def ResumeRun(self, request: pb.StopRequest, context: Context) -> Any:
        return await self._change(context, self._federation.resume_run)

    async def ExportAdapter(
        self, request: pb.ExportRequest, context: Context
    ) -> AsyncIterator[pb.ExportChunk]:
        """A checkpointed round's adapter with PEFT's config, loadable by PeftModel."""
        run = self._federation.run
        if run is None:
            await refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "no run to export from")
        try:
            round_index, path = self._federation.store.adapter_file(run.run_id, request.round)
        except FileNotFoundError as exc:
            await refuse(context, grpc.StatusCode.NOT_FOUND, str(exc))
        loop = asyncio.get_running_loop()
        payload = await loop.run_in_executor(self._workers, path.read_bytes)
        digest = PayloadDigest.of(payload)
        yield pb.ExportChunk(
            header=pb.ExportHeader(
                run_id=run.run_id,
                round=round_index,
                adapter_config_json=self._adapter_config_json,
                adapter=pb.PayloadHeader(total_bytes=digest.total_bytes, sha256=digest.sha256),
            )
        )
        for chunk in iter_chunks(payload):
            yield pb.ExportChunk(data=chunk)
