"""Faulty and hostile silos: lying headers, refused uploads at scale, identities that rejoin."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from coordinator.checkpoint import CheckpointStore
from coordinator.registry import SiloRegistry
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator
from shared.tensor_codec import encode_state
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import tls
from tests.helpers import ProtocolSilo, channel, constant_delta, refused, update_stream


def _start(coordinator: RunningCoordinator, certs: Path, **spec: object) -> pb_grpc.AdminStub:
    admin = pb_grpc.AdminStub(channel(coordinator.port, tls(certs, "admin")))
    values = {"rounds": 1, "silos_per_round": 1, "min_silos": 1, "round_deadline_s": 30.0, **spec}
    admin.StartRun(pb.StartRunRequest(spec=RunSpec(**values).to_proto()))  # type: ignore[arg-type]
    return admin


def test_header_numbers_beyond_what_the_silo_declared_are_refused(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model, num_samples=10)
    _start(coordinator, certs, strategy="fednova")
    task = silo.next_task()
    payload = encode_state(constant_delta(silo.download(task), 0.1))
    for kwargs, needle in (
        ({"num_samples": 11}, "num_samples 11 outside 1..10"),
        ({"num_samples": 0}, "num_samples 0"),
        ({"steps": 0}, "steps 0 outside"),
        ({"steps": 10**15}, "steps 1000000000000000 outside"),
    ):
        error = refused(
            lambda k=kwargs: silo.stub.UploadUpdate(update_stream(task.task_id, payload, **k))
        )  # type: ignore[arg-type]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (error.details() or ""), error.details()
    huge = constant_delta(silo.download(task), 3e38)
    error = refused(lambda: silo.upload(task, huge))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "above 1e+06" in (error.details() or "")
    silo.close()


def test_refused_uploads_leak_no_file_descriptors(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    stale = update_stream("run-x/r1/a0/nope", b"\0" * 64)
    refused(lambda: silo.stub.UploadUpdate(stale))  # warm up gRPC's own descriptors
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        error = refused(
            lambda: silo.stub.UploadUpdate(update_stream("run-x/r1/a0/nope", b"\0" * 64))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(os.listdir("/proc/self/fd")) <= before + 3
    silo.close()


def test_rejoining_silo_gets_its_unanswered_task_and_the_old_stream_is_aborted(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    first = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    _start(coordinator, certs)
    task = first.next_task()
    second = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)  # same identity
    again = second.next_task()
    assert again.task_id == task.task_id
    deadline = time.monotonic() + 5
    while first.stream_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.stream_error is not None and first.stream_error.code() == grpc.StatusCode.ABORTED
    assert "superseded" in (first.stream_error.details() or "")
    second.upload(again, constant_delta(second.download(again), 0.1))
    first.close()
    second.close()


def test_a_silo_between_rejoin_and_its_new_stream_still_counts_as_reachable() -> None:
    registry = SiloRegistry(liveness_timeout_s=5.0)
    old = registry.join("silo-1", 10)
    registry.set_streaming(old, True)
    new = registry.join("silo-1", 10)  # reconnects: its new stream is not open yet
    registry.set_streaming(old, False)  # the superseded stream ends first
    assert registry.connected() == []
    assert registry.reachable() == ["silo-1"]  # a round waits for the task it owes
    registry.set_streaming(new, True)
    assert registry.connected() == registry.reachable() == ["silo-1"]
    registry.set_streaming(new, False)  # the silo leaves: a round stops waiting at once
    assert registry.reachable() == []


def test_one_coordinator_per_checkpoint_directory(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "runs" / "r" / ".round-00003.tmp-77").mkdir(parents=True)
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "update-abc.safetensors").write_bytes(b"half")
    store.lock()
    assert not list(tmp_path.glob("runs/*/.round-*")) and not list(tmp_path.glob("incoming/*"))
    with pytest.raises(RuntimeError, match="in use by another coordinator"):
        CheckpointStore(tmp_path).lock()
    store.unlock()
    CheckpointStore(tmp_path).lock()


def test_history_is_not_extended_when_the_checkpoint_cannot_be_written(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    admin = _start(coordinator, certs, rounds=2)
    run_dir = next((tmp_path / "checkpoints" / "runs").iterdir())
    # a file where round 1's temporary directory must go: saving round 1 fails
    (run_dir / f".round-00001.tmp-{os.getpid()}").write_text("in the way")
    task = silo.next_task()
    silo.upload(task, constant_delta(silo.download(task), 0.1))
    deadline = time.monotonic() + 20
    status = admin.GetStatus(pb.StatusRequest())
    while status.state == pb.RUN_STATE_RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
        status = admin.GetStatus(pb.StatusRequest())
    assert status.state == pb.RUN_STATE_FAILED and status.completed_rounds == 0
    assert "round 1" in status.message
    saved = CheckpointStore(tmp_path / "checkpoints").load_latest()
    assert saved is not None and saved.round == 0 and saved.run.completed_rounds == 0
    silo.close()
