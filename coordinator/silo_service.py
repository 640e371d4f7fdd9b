"""The Silo gRPC service: join, task stream, adapter download, update upload, heartbeat."""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from coordinator.federation import Federation
from coordinator.rounds import OpenRound, Refusal
from shared.adapter import describe_config_difference, lora_identity
from shared.errors import PayloadError, UpdateRejected
from shared.payload import PayloadDigest, PayloadSink, iter_chunks
from shared.pki import ROLE_SILO
from shared.tensor_codec import TensorLayout, describe_layout_difference
from shared.tls import require_role
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class FederationIdentity:
    """What every silo must share with the coordinator: base model and LoRA configuration."""

    def __init__(
        self, *, canonical_config: dict[str, object], fingerprint: str, lora: dict[str, object]
    ) -> None:
        self.canonical_config = canonical_config
        self.fingerprint = fingerprint
        self.lora = lora


class SiloService(pb_grpc.SiloServicer):
    def __init__(
        self,
        *,
        federation: Federation,
        identity: FederationIdentity,
        incoming_dir: Path,
        heartbeat_interval_s: int,
    ) -> None:
        self._federation = federation
        self._identity = identity
        self._incoming = incoming_dir
        self._heartbeat_interval_s = heartbeat_interval_s
        incoming_dir.mkdir(parents=True, exist_ok=True)

    def _compatibility_problems(self, request: pb.JoinRequest) -> list[str]:
        if request.base_model_fingerprint != self._identity.fingerprint:
            try:
                theirs = json.loads(request.base_model_config_json)
            except json.JSONDecodeError:
                return ["base model config is not valid JSON"]
            diff = describe_config_difference(self._identity.canonical_config, theirs)
            return ["base model differs: " + ("; ".join(diff) or "fingerprint only")]
        try:
            lora = lora_identity(json.loads(request.lora_config_json))
        except (json.JSONDecodeError, AttributeError) as exc:
            return [f"LoRA config unreadable: {exc}"]
        if lora != self._identity.lora:
            keys = [k for k in self._identity.lora if lora.get(k) != self._identity.lora[k]]
            return [f"LoRA {k}: {lora.get(k)!r}, expected {self._identity.lora[k]!r}" for k in keys]
        theirs_layout = {
            t.name: TensorLayout(name=t.name, shape=tuple(t.shape), dtype=t.dtype)
            for t in request.adapter_layout
        }
        diff = describe_layout_difference(self._federation.layout, theirs_layout)
        return ["adapter layout differs: " + "; ".join(diff)] if diff else []

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        peer = require_role(context, ROLE_SILO)
        problems = self._compatibility_problems(request)
        if problems:
            log.warning("silo %s refused: %s", peer.name, "; ".join(problems))
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"silo {peer.name!r} is incompatible: " + "; ".join(problems),
            )
        session = self._federation.registry.join(
            peer.name, request.num_train_samples, request.num_test_samples
        )
        log.info(
            "silo %s joined (%d training, %d test samples)",
            peer.name,
            request.num_train_samples,
            request.num_test_samples,
        )
        return pb.JoinResponse(
            silo_id=peer.name,
            session_id=session.session_id,
            heartbeat_interval_s=self._heartbeat_interval_s,
        )

    def ReceiveTasks(
        self, request: pb.TaskStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RoundTask]:
        peer = require_role(context, ROLE_SILO)
        registry = self._federation.registry
        session = registry.session(request.session_id)
        if session is None or session.silo_id != peer.name:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"silo {peer.name!r}: unknown session; join first",
            )
        registry.set_streaming(session, True)
        owed = self._federation.unanswered_task(peer.name)
        if owed is not None:  # a task sent to an earlier session of this silo
            session.tasks.put(owed)
        try:
            while context.is_active() and not registry.closed.is_set():
                if not registry.is_current(session):
                    context.abort(
                        grpc.StatusCode.ABORTED,
                        f"silo {peer.name!r}: superseded by a newer session of the same identity",
                    )
                try:
                    yield session.tasks.get(timeout=0.5)
                except queue.Empty:
                    continue
        finally:
            registry.set_streaming(session, False)
            log.info("silo %s task stream closed", peer.name)

    def DownloadAdapter(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PayloadChunk]:
        peer = require_role(context, ROLE_SILO)
        try:
            open_round = self._federation.round_for_task(request.task_id, peer.name)
        except Refusal as refusal:
            context.abort(refusal.code, str(refusal))
        yield pb.PayloadChunk(
            header=pb.PayloadHeader(
                total_bytes=open_round.digest.total_bytes, sha256=open_round.digest.sha256
            )
        )
        for chunk in iter_chunks(open_round.payload):
            yield pb.PayloadChunk(data=chunk)
        self._federation.count_sent(open_round, open_round.digest.total_bytes, peer.name)

    def UploadUpdate(
        self, request_iterator: Iterator[pb.UpdateChunk], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        peer = require_role(context, ROLE_SILO)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "an update stream must start with its header"
            )
        header = first.header
        open_round: OpenRound | None = None
        path: Path | None = None
        started = time.monotonic()
        try:
            open_round = self._federation.round_for_task(header.task_id, peer.name)
            with tempfile.NamedTemporaryFile(
                prefix="update-", suffix=".safetensors", dir=self._incoming, delete=False
            ) as out:
                path = Path(out.name)
                sink = PayloadSink(
                    expected=PayloadDigest(header.payload.total_bytes, header.payload.sha256),
                    out=out,
                    max_bytes=2 * open_round.digest.total_bytes + (1 << 20),
                )
                for message in request_iterator:
                    if message.WhichOneof("part") != "data":
                        raise PayloadError("a second header inside one update stream")
                    sink.write(message.data)
                sink.finish()
            self._federation.accept_update(
                open_round=open_round,
                silo_id=peer.name,
                header=header,
                path=path,
                nbytes=sink.received,
            )
            self._federation.metrics.upload_duration.observe(time.monotonic() - started)
            return pb.UploadReceipt(task_id=header.task_id, bytes_received=sink.received)
        except Refusal as refusal:
            self._federation.reject(None, "refused")
            context.abort(refusal.code, str(refusal))
        except (PayloadError, UpdateRejected) as exc:
            reason = exc.reason if isinstance(exc, UpdateRejected) else "payload"
            self._federation.reject(open_round, reason)
            where = f"round {open_round.index}" if open_round else "no round"
            log.warning("update from %s refused (%s): %s", peer.name, where, exc)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"update from {peer.name!r} for {where} refused: {exc}",
            )
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

    def ReportEvaluation(
        self, request: pb.EvaluationReport, context: grpc.ServicerContext
    ) -> pb.EvaluationReceipt:
        peer = require_role(context, ROLE_SILO)
        try:
            self._federation.accept_report(silo_id=peer.name, report=request)
        except Refusal as refusal:
            context.abort(refusal.code, str(refusal))
        return pb.EvaluationReceipt(task_id=request.task_id)

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatResponse:
        require_role(context, ROLE_SILO)
        known = self._federation.registry.touch(request.session_id, request.state)
        return pb.HeartbeatResponse(session_known=known)
