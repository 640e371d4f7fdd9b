"""What transfers may hold at the coordinator: chunk permits given back on every refusal,
a certificate's share of calls, one shared permit per stalling silo and that only for
HOLD_S, and a download nobody reads abandoned after the stall limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc

from bench.sized_model import sized_model
from coordinator.download import CHUNKS_IN_FLIGHT as DOWNLOAD_CHUNKS_IN_FLIGHT
from coordinator.permits import HOLD_S
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator, serve
from coordinator.silo_service import SiloServiceSettings
from coordinator.upload import CHUNKS_IN_FLIGHT
from shared.pki import create_federation
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import EVALUATOR, coordinator_config, tls
from tests.helpers import (
    ProtocolSilo,
    admin_stub,
    channel,
    constant_delta,
    join_request,
    refusals,
    refused,
    update_stream,
    wire_payload,
)


def test_refused_uploads_give_back_every_chunk_permit(
    quick: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(quick.port, tls(certs, "silo-1"), tiny_model, num_samples=10)
    admin = admin_stub(quick, certs)
    admin.StartRun(pb.StartRunRequest(spec=RunSpec(rounds=1, silos_per_round=1).to_proto()))
    task = silo.next_task()
    garbage = b"\xff" * 64 * 1024  # not safetensors: refused at its first chunk
    for _ in range(2 * CHUNKS_IN_FLIGHT):  # the second chunk is read while the first fails
        chunks = [garbage[:1024], garbage[1024:]]
        error = refused(
            lambda c=chunks: silo.stub.UploadUpdate(
                update_stream(task.task_id, garbage, chunks=c), timeout=10
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    silo.upload(task, constant_delta(silo.download(task), 0.01))  # not waiting on a permit
    silo.close()


def _stalled_upload(stub: pb_grpc.SiloStub, task_id: str, release: threading.Event) -> object:
    def messages() -> Iterator[pb.UpdateChunk]:
        yield next(update_stream(task_id, b"\0" * 1024))  # the header, then nothing
        release.wait(30)

    return stub.UploadUpdate.future(messages())


def test_one_silo_cannot_hold_more_than_its_share_of_calls(
    quick: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(quick.port, tls(certs, "silo-1"), tiny_model)
    admin = admin_stub(quick, certs)
    admin.StartRun(pb.StartRunRequest(spec=RunSpec(rounds=1, silos_per_round=1).to_proto()))
    task = silo.next_task()
    release = threading.Event()
    stalled = [_stalled_upload(silo.stub, task.task_id, release) for _ in range(70)]
    try:
        codes = []
        for call in stalled:
            try:
                call.result(timeout=20)  # type: ignore[attr-defined]
            except grpc.RpcError as exc:
                codes.append(exc.code())
        # two were admitted and abandoned when they stalled; the rest were refused at once
        assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 2
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 68
        assert refusals(quick, "UploadUpdate", "RESOURCE_EXHAUSTED") == 68
        beat = pb.HeartbeatRequest(session_id=silo.joined.session_id, state="idle")
        assert silo.stub.Heartbeat(beat, timeout=2).session_known
        assert admin.GetStatus(pb.StatusRequest(), timeout=2).state == pb.RUN_STATE_RUNNING
    finally:
        release.set()
    again = pb_grpc.SiloStub(channel(quick.port, tls(certs, "silo-1")))
    error = refused(
        lambda: again.ReceiveTasks(pb.TaskStreamRequest(session_id=silo.joined.session_id)).next()
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    silo.upload(task, constant_delta(silo.download(task), 0.01))
    silo.close()


def test_silos_that_stall_their_uploads_hold_one_shared_permit_each(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    """Two silos, each with two uploads that send their header and then nothing (as many as
    a certificate may hold), would take all CHUNKS_IN_FLIGHT upload permits for the stall
    limit (a minute here) if every stalled upload held one; a silo's uploads wait on its
    network one at a time, so an honest silo's upload still goes through at once."""
    assert CHUNKS_IN_FLIGHT == 4
    names = ["silo-1", "silo-2", EVALUATOR]  # the third certificate: an honest site
    silos = {n: ProtocolSilo(coordinator.port, tls(certs, n), tiny_model) for n in names}
    admin = admin_stub(coordinator, certs)
    spec = RunSpec(rounds=1, silos_per_round=3, min_silos=3, round_deadline_s=120.0)
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    tasks = {n: silo.next_task() for n, silo in silos.items()}
    release = threading.Event()
    stalled = [
        _stalled_upload(silos[n].stub, tasks[n].task_id, release)
        for n in ("silo-1", "silo-2")
        for _ in range(2)
    ]
    try:
        time.sleep(1.0)  # every stalled upload is admitted and waiting for its data
        honest, task = silos[EVALUATOR], tasks[EVALUATOR]
        payload = wire_payload(task, constant_delta(honest.download(task), 0.01))
        receipt = honest.stub.UploadUpdate(update_stream(task.task_id, payload), timeout=15)
        assert receipt.bytes_received == len(payload)
        assert not any(call.done() for call in stalled)  # type: ignore[attr-defined]
    finally:
        release.set()
        for silo in silos.values():
            silo.close()


def test_as_many_stalling_silos_as_permits_do_not_hold_up_an_honest_upload(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """CHUNKS_IN_FLIGHT certificates, each with an upload that sends its header and then
    nothing for the whole stall limit (a minute), would hold every shared permit for that
    minute if a permit were held for as long as its silo's network keeps it waiting; it is
    held HOLD_S at most, so an honest silo's upload goes through within seconds."""
    hostile = [f"silo-{n}" for n in range(1, CHUNKS_IN_FLIGHT + 1)]
    pki = tmp_path / "pki"
    create_federation(
        pki, hosts=["localhost", "127.0.0.1"], silos=[*hostile, "honest"], admins=["admin"]
    )
    with serve(coordinator_config(pki, tiny_model, tmp_path / "checkpoints")) as running:
        silos = {
            n: ProtocolSilo(running.port, tls(pki, n), tiny_model) for n in [*hostile, "honest"]
        }
        spec = RunSpec(rounds=1, silos_per_round=len(silos), min_silos=len(silos))
        admin_stub(running, pki).StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        tasks = {n: silo.next_task() for n, silo in silos.items()}
        release = threading.Event()
        stalled = [_stalled_upload(silos[n].stub, tasks[n].task_id, release) for n in hostile]
        try:
            time.sleep(1.0)  # every stalled upload is admitted, holding a permit, waiting
            honest, task = silos["honest"], tasks["honest"]
            payload = wire_payload(task, constant_delta(honest.download(task), 0.01))
            started = time.monotonic()
            receipt = honest.stub.UploadUpdate(update_stream(task.task_id, payload), timeout=20)
            waited = time.monotonic() - started
            assert receipt.bytes_received == len(payload)
            assert waited < HOLD_S + 5.0, waited
            assert not any(call.done() for call in stalled)  # type: ignore[attr-defined]
        finally:
            release.set()
            for silo in silos.values():
                silo.close()


def test_a_silo_that_stops_reading_its_download_is_abandoned_without_holding_others(
    certs: Path, tmp_path: Path
) -> None:
    # 64 MB of float32 adapter (32 MB on the bfloat16 wire): more than gRPC's windows and the
    # sockets' buffers take, so the coordinator's writes wait on a silo that does not read
    model = sized_model(tmp_path / "model", adapter_bytes=64 * 10**6)
    config = replace(
        coordinator_config(certs, model, tmp_path / "checkpoints"),
        silo_service=SiloServiceSettings(heartbeat_interval_s=1, upload_stall_s=1.0),
    )
    with serve(config) as running:
        stalled = ProtocolSilo(running.port, tls(certs, "silo-1"), model)
        honest = ProtocolSilo(running.port, tls(certs, "silo-2"), model)
        admin = admin_stub(running, certs)
        spec = RunSpec(rounds=1, silos_per_round=2, min_silos=2, round_deadline_s=60.0)
        admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        task = stalled.next_task()
        stream = stalled.stub.DownloadAdapter(pb.DownloadRequest(task_id=task.task_id))
        assert next(stream).WhichOneof("part") == "header"  # then it reads nothing
        started = time.monotonic()
        downloaded = honest.download(honest.next_task())  # not held up by the stalled one
        assert sum(t.numel() for t in downloaded.values()) * 4 >= 60 * 10**6
        time.sleep(max(0.0, 2.5 - (time.monotonic() - started)))
        error = refused(lambda: list(stream))  # what was buffered, then the refusal
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "silo-1" in (error.details() or "") and "read nothing" in (error.details() or "")
        assert refusals(running, "DownloadAdapter", "DEADLINE_EXCEEDED") == 1
        stalled.close()
        honest.close()


def test_as_many_silos_not_reading_as_permits_do_not_hold_up_an_honest_download(
    tmp_path: Path,
) -> None:
    """DOWNLOAD_CHUNKS_IN_FLIGHT certificates whose downloads read the header and then nothing
    for the stall limit (a minute): every shared permit would wait on their networks for that
    minute if a write held its permit until sent; it holds it HOLD_S at most."""
    hostile = [f"silo-{n}" for n in range(1, DOWNLOAD_CHUNKS_IN_FLIGHT + 1)]
    pki = tmp_path / "pki"
    create_federation(
        pki, hosts=["localhost", "127.0.0.1"], silos=[*hostile, "honest"], admins=["admin"]
    )
    # 64 MB of float32 adapter: more than gRPC's windows and the sockets' buffers take
    model = sized_model(tmp_path / "model", adapter_bytes=64 * 10**6)
    # one request for all: building each (a fingerprint of the model) takes a second on a slow
    # machine, and the first silos, which send no heartbeats, would leave before the last join
    request = join_request(model)
    with serve(coordinator_config(pki, model, tmp_path / "checkpoints")) as running:
        silos = {
            n: ProtocolSilo(running.port, tls(pki, n), model, request=request)
            for n in [*hostile, "honest"]
        }
        spec = RunSpec(rounds=1, silos_per_round=len(silos), min_silos=len(silos))
        admin_stub(running, pki).StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        tasks = {n: silo.next_task() for n, silo in silos.items()}
        stalled = []
        for name in hostile:
            stream = silos[name].stub.DownloadAdapter(
                pb.DownloadRequest(task_id=tasks[name].task_id)
            )
            assert next(stream).WhichOneof("part") == "header"  # then it reads nothing
            stalled.append(stream)
        time.sleep(1.0)  # every stalled download holds a permit, its writes waiting
        started = time.monotonic()
        downloaded = silos["honest"].download(tasks["honest"])
        waited = time.monotonic() - started
        assert sum(t.numel() for t in downloaded.values()) * 4 >= 60 * 10**6
        assert waited < HOLD_S + 10.0, waited
        assert not any(stream.done() for stream in stalled)
        for stream in stalled:
            stream.cancel()
        for silo in silos.values():
            silo.close()
