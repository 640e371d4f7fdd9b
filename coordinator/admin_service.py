"""The Admin gRPC service: start, inspect and stop runs. Only admin certificates may call it."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from coordinator.federation import Federation
from coordinator.rounds import Refusal
from coordinator.run_state import RunSpec
from shared.payload import PayloadDigest, iter_chunks
from shared.pki import ROLE_ADMIN
from shared.tls import require_role
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, *, federation: Federation, adapter_config_json: str) -> None:
        self._federation = federation
        self._adapter_config_json = adapter_config_json  # PEFT's adapter_config.json

    def StartRun(self, request: pb.StartRunRequest, context: grpc.ServicerContext) -> pb.RunStatus:
        require_role(context, ROLE_ADMIN)
        try:
            self._federation.start_run(RunSpec.from_proto(request.spec))
        except Refusal as refusal:
            context.abort(refusal.code, str(refusal))
        return self._federation.status()

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.RunStatus:
        require_role(context, ROLE_ADMIN)
        return self._federation.status()

    def ListSilos(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.SiloList:
        require_role(context, ROLE_ADMIN)
        return pb.SiloList(silos=self._federation.registry.snapshot())

    def StopRun(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.RunStatus:
        require_role(context, ROLE_ADMIN)
        try:
            self._federation.stop_run()
        except Refusal as refusal:
            context.abort(refusal.code, str(refusal))
        return self._federation.status()

    def PauseRun(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.RunStatus:
        require_role(context, ROLE_ADMIN)
        try:
            self._federation.pause_run()
        except Refusal as refusal:
            context.abort(refusal.code, str(refusal))
        return self._federation.status()

    def ResumeRun(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.RunStatus:
        require_role(context, ROLE_ADMIN)
        try:
            self._federation.resume_run()
        except Refusal as refusal:
            context.abort(refusal.code, str(refusal))
        return self._federation.status()

    def ExportAdapter(
        self, request: pb.ExportRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportChunk]:
        """A checkpointed round's adapter with PEFT's config, loadable by PeftModel."""
        require_role(context, ROLE_ADMIN)
        run = self._federation.run
        if run is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no run to export from")
        try:
            round_index, path = self._federation.store.adapter_file(run.run_id, request.round)
        except FileNotFoundError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        payload = path.read_bytes()
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
