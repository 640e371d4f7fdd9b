"""The Silo gRPC service on the event loop: join, task stream, adapter download, update
upload, heartbeat, evaluation report. Blocking work (disk, validation, folding) runs in the
federation's worker threads, so that a waiting stream or a slow upload holds no thread and
heartbeats are answered while updates are folded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from coordinator.checkpoint import private_dir
from coordinator.download import send_download
from coordinator.federation import Federation
from coordinator.guard import Context, caller, refuse
from coordinator.identity import IdentityBook
from coordinator.join_check import FederationIdentity, join_problems
from coordinator.registry import DuplicateAgent, SiloSession
from coordinator.rounds import Refusal
from coordinator.upload import receive_update
from shared.bounded import printable
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Longest operator-visible state a heartbeat may carry.
MAX_STATE_CHARS = 128


@dataclass(frozen=True)
class SiloServiceSettings:
    """Timing and size bounds of the silo service."""

    heartbeat_interval_s: int = 5  # how often silos report
    upload_stall_s: float = 60.0  # an upload (or download) stalled this long is abandoned
    max_declared_samples: int = 10**9  # a Join declaring more is refused outright


async def _refuse(context: Context, refusal: Refusal) -> NoReturn:
    await refuse(context, refusal.code, str(refusal))


class SiloService(pb_grpc.SiloServicer):
    def __init__(
        self,
        *,
        federation: Federation,
        identity: FederationIdentity,
        incoming_dir: Path,
        settings: SiloServiceSettings,
        workers: ThreadPoolExecutor,
        identities: IdentityBook,
    ) -> None:
        self._federation = federation
        self._identities = identities
        self._identity = identity
        self._incoming = incoming_dir
        self._settings = settings
        self._workers = workers
        private_dir(incoming_dir)

    async def _blocking(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, lambda: function(*args, **kwargs))

    def _own_session(self, session_id: str) -> tuple[SiloSession | None, Refusal | None]:
        """The caller's session by id; a session of another silo is refused."""
        session = self._federation.registry.session(session_id)
        if session is not None and session.silo_id != caller().name:
            return None, Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"session {printable(session_id, limit=12)} is not a session of {caller().name!r}",
            )
        return session, None

    async def Join(self, request: pb.JoinRequest, context: Context) -> pb.JoinResponse:
        peer = caller()
        problems = join_problems(
            request,
            identity=self._identity,
            layout=self._federation.layout,
        )
        if problems:
            log.warning("silo %s refused: %s", peer.name, "; ".join(problems))
            await refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"silo {peer.name!r} is incompatible: " + "; ".join(problems),
            )
        try:
            self._federation.check_declared_samples(
                request.num_train_samples, hard_cap=self._settings.max_declared_samples
            )
            await self._blocking(
                self._federation.check_join_weights,
                peer.name,
                request.base_model_weights_fingerprint[:128],
            )
        except Refusal as refusal:
            await _refuse(context, refusal)
        try:
            session = self._federation.registry.join(
                peer.name,
                request.num_train_samples,
                request.num_test_samples,
                agent_instance=request.agent_instance[:64],
                weights_fingerprint=request.base_model_weights_fingerprint[:128],
            )
        except DuplicateAgent:
            log.warning("silo %s: a second agent with the same certificate refused", peer.name)
            await refuse(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"silo {peer.name!r} is already connected from another agent process with this "
                "certificate; stop the other agent (each silo runs one)",
            )
        await self._blocking(self._identities.pin, peer)
        self._federation.metrics.show_silo(peer.name)
        log.info(
            "silo %s joined (%d training, %d test samples)",
            peer.name,
            request.num_train_samples,
            request.num_test_samples,
        )
        return pb.JoinResponse(
            silo_id=peer.name,
            session_id=session.session_id,
            heartbeat_interval_s=self._settings.heartbeat_interval_s,
        )

    async def ReceiveTasks(
        self, request: pb.TaskStreamRequest, context: Context
    ) -> AsyncIterator[pb.RoundTask]:
        peer = caller()
        registry = self._federation.registry
        session, refusal = self._own_session(request.session_id)
        if refusal is not None:
            await _refuse(context, refusal)
        if session is None or not registry.is_current(session):
            await refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"silo {peer.name!r}: unknown session; join first",
            )
        if not registry.open_stream(session):
            await refuse(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"silo {peer.name!r}: this session already has an open task stream",
            )
        try:
            owed = self._federation.unanswered_task(peer.name)
            if owed is not None:  # a task sent to an earlier session of this silo
                yield owed
            while True:
                task = await session.tasks.get()
                if isinstance(task, pb.RoundTask):
                    yield task
                    continue
                if registry.closed.is_set():
                    return
                await refuse(context, task.code, task.message)
        finally:
            registry.set_streaming(session, False)
            log.info("silo %s task stream closed", peer.name)

    async def DownloadAdapter(self, request: pb.DownloadRequest, context: Context) -> None:
        peer = caller()
        try:
            open_round = self._federation.round_for_task(request.task_id, peer.name)
        except Refusal as refusal:
            await _refuse(context, refusal)
        await send_download(
            context, open_round, silo_id=peer.name, stall_s=self._settings.upload_stall_s
        )
        self._federation.count_sent(open_round, open_round.digest.total_bytes, peer.name)

    async def UploadUpdate(self, request_iterator: Any, context: Context) -> pb.UploadReceipt:
        started = time.monotonic()
        receipt = await receive_update(
            context,
            federation=self._federation,
            silo_id=caller().name,
            incoming=self._incoming,
            stall_s=self._settings.upload_stall_s,
            blocking=self._blocking,
        )
        self._federation.metrics.upload_duration.observe(time.monotonic() - started)
        return receipt

    async def ReportEvaluation(
        self, request: pb.EvaluationReport, context: Context
    ) -> pb.EvaluationReceipt:
        try:
            self._federation.accept_report(silo_id=caller().name, report=request)
        except Refusal as refusal:
            await _refuse(context, refusal)
        return pb.EvaluationReceipt(task_id=request.task_id)

    async def ReportFailure(self, request: pb.FailureReport, context: Context) -> pb.FailureReceipt:
        try:
            self._federation.accept_failure(silo_id=caller().name, report=request)
        except Refusal as refusal:
            await _refuse(context, refusal)
        return pb.FailureReceipt(task_id=request.task_id)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        session, refusal = self._own_session(request.session_id)
        if refusal is not None:
            await _refuse(context, refusal)
        if len(request.state) > MAX_STATE_CHARS:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"heartbeat state of {len(request.state)} characters; at most "
                f"{MAX_STATE_CHARS} are accepted",
            )
        if session is None:
            return pb.HeartbeatResponse(session_known=False)
        known = self._federation.registry.touch(
            session, printable(request.state, limit=MAX_STATE_CHARS)
        )
        return pb.HeartbeatResponse(session_known=known)
