"""The Admin gRPC service: start, inspect and stop runs. Only admin certificates may call it."""

from __future__ import annotations

import grpc

from coordinator.federation import Federation
from coordinator.rounds import Refusal
from coordinator.run_state import RunSpec
from shared.pki import ROLE_ADMIN
from shared.tls import require_role
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, *, federation: Federation) -> None:
        self._federation = federation

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
