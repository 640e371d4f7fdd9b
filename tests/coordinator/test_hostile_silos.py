"""One hostile silo against a real coordinator over mutual TLS: it can neither take the
model over nor stall anyone, and every refusal carries its exact status code, is counted with
its reason, and leaves the global adapter, the run's history and its status untouched."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest
import torch

from coordinator.aggregation.spool import SpoolPool
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator, serve
from shared.pki import create_federation
from shared.tensor_codec import StateDict, encode_state
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import coordinator_config, tls
from tests.helpers import (
    ProtocolSilo,
    admin_stub,
    channel,
    constant_delta,
    join_request,
    refusals,
    refused,
    update_stream,
)


def _rejected(running: RunningCoordinator, reason: str) -> float:
    value = running.federation.metrics.registry.get_sample_value(
        "fedmllm_updates_rejected_total", {"reason": reason}
    )
    return value or 0.0


def _adapter(running: RunningCoordinator) -> StateDict:
    model = running.federation.model
    assert model is not None
    return model.adapter()


def test_declared_sample_counts_are_capped(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    stub = pb_grpc.SiloStub(channel(coordinator.port, tls(certs, "silo-1")))
    error = refused(lambda: stub.Join(join_request(tiny_model, num_samples=2**64 - 1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000000000" in (error.details() or "")
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-2"), tiny_model, num_samples=5000)
    admin = admin_stub(coordinator, certs)
    spec = RunSpec(rounds=1, silos_per_round=1, min_silos=1, max_samples_per_silo=1000)
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    error = refused(lambda: stub.Join(join_request(tiny_model, num_samples=1001)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000 are accepted" in (error.details() or "")
    listed = admin.ListSilos(pb.StatusRequest())
    assert [s.silo_id for s in listed.silos] == ["silo-2"]  # silo-1 never joined
    silo.close()


def test_header_numbers_outside_the_plausible_are_refused_and_counted(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model, num_samples=10)
    admin = admin_stub(coordinator, certs)
    spec = RunSpec(rounds=1, silos_per_round=1, min_silos=1, batch_size=4, gamma_max=0.0)
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    task = silo.next_task()
    before = _adapter(coordinator)
    payload = encode_state(constant_delta(silo.download(task), 0.01))
    for kwargs, needle in (
        ({"loss": -5.0}, "mean_loss -5 outside"),
        ({"loss": 1e308}, "mean_loss 1e+308 outside"),
        ({"loss": float("nan")}, "mean_loss nan outside"),
        ({"gamma": 1e300}, "gamma 1e+300 outside [0, 0]"),
        ({"steps": 4}, "steps 4 outside 1..3"),  # 10 samples in batches of 4: 3 steps
        ({"num_samples": 11}, "num_samples 11 outside 1..10"),
    ):
        error = refused(
            lambda k=kwargs: silo.stub.UploadUpdate(update_stream(task.task_id, payload, **k))
        )  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, kwargs
        assert needle in (error.details() or ""), error.details()
    assert _rejected(coordinator, "metadata") == 6
    status = admin.GetStatus(pb.StatusRequest())
    assert status.completed_rounds == 0 and status.state == pb.RUN_STATE_RUNNING
    for name, tensor in _adapter(coordinator).items():
        assert torch.equal(tensor, before[name])
    silo.upload(task, constant_delta(silo.download(task), 0.01), steps=3)
    deadline = time.monotonic() + 20
    while admin.GetStatus(pb.StatusRequest()).state == pb.RUN_STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert admin.GetStatus(pb.StatusRequest()).history[0].rejected == 6
    silo.close()


def test_an_update_the_full_disk_cannot_hold_pauses_the_run_until_there_is_room(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /dev/full is the kernel's own full disk: every write to it fails with ENOSPC. A spool
    # opened there stands in for a spool directory whose disk just filled up.
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model, num_samples=10)
    admin = admin_stub(coordinator, certs)
    spec = RunSpec(rounds=1, silos_per_round=1, min_silos=1, round_deadline_s=60.0)
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    task = silo.next_task()
    before = _adapter(coordinator)
    delta = constant_delta(silo.download(task), 0.01)
    with monkeypatch.context() as patched:
        full = Path("/dev/full")
        patched.setattr(SpoolPool, "open", staticmethod(lambda path: full.open("wb")))
        error = refused(lambda: silo.upload(task, delta))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "silo-1" in (error.details() or "") and "full" in (error.details() or "")
        spooled = sum(t.numel() for t in delta.values()) * 2  # bfloat16 values, no header
        assert f"about {spooled:,} bytes needed" in (error.details() or "")
        assert _rejected(coordinator, "disk_full") == 1
        paused = _wait_for(admin, lambda s: s.state == pb.RUN_STATE_PAUSED)
        assert "full" in paused.message and paused.completed_rounds == 0
        for name, tensor in _adapter(coordinator).items():
            assert torch.equal(tensor, before[name])
    # room again: the run resumes by itself and the round is asked again
    retry = silo.next_task()
    assert retry.round == 1 and retry.task_id != task.task_id
    error = refused(lambda: silo.upload(task, delta))  # the abandoned attempt's task
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "late" in (error.details() or "")
    assert _rejected(coordinator, "late") == 1
    silo.upload(retry, constant_delta(silo.download(retry), 0.01))
    done = _wait_for(admin, lambda s: s.state != pb.RUN_STATE_RUNNING)
    assert done.state == pb.RUN_STATE_COMPLETED
    silo.close()


def _wait_for(admin: pb_grpc.AdminStub, done: object, timeout: float = 30) -> pb.RunStatus:
    deadline = time.monotonic() + timeout
    while not done(status := admin.GetStatus(pb.StatusRequest())):  # type: ignore[operator]
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status


def test_heartbeats_cannot_touch_another_silos_session(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    victim = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    attacker = ProtocolSilo(coordinator.port, tls(certs, "silo-2"), tiny_model)
    forged = pb.HeartbeatRequest(session_id=victim.joined.session_id, state="forged")
    error = refused(lambda: attacker.stub.Heartbeat(forged))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    oversized = pb.HeartbeatRequest(session_id=attacker.joined.session_id, state="x" * 3_000_000)
    error = refused(lambda: attacker.stub.Heartbeat(oversized))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    escape = pb.HeartbeatRequest(session_id=attacker.joined.session_id, state="ok\x1b[2J\nforged")
    assert attacker.stub.Heartbeat(escape).session_known
    states = {
        s.silo_id: s.state
        for s in admin_stub(coordinator, certs).ListSilos(pb.StatusRequest()).silos
    }
    assert states["silo-1"] == "joined"
    assert states["silo-2"] == "ok?[2J?forged"
    error = refused(
        lambda: attacker.stub.ReceiveTasks(
            pb.TaskStreamRequest(session_id=victim.joined.session_id)
        ).next()
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refusals(coordinator, "Heartbeat", "PERMISSION_DENIED") == 1
    assert refusals(coordinator, "Heartbeat", "INVALID_ARGUMENT") == 1
    assert refusals(coordinator, "ReceiveTasks", "PERMISSION_DENIED") == 1
    victim.close()
    attacker.close()


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper than 32"),
        ('{"a": "' + "x" * 2_000_000 + '"}', "bytes; at most"),
    ],
    ids=["deep", "large"],
)
def test_join_json_is_bounded(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path, document: str, needle: str
) -> None:
    stub = pb_grpc.SiloStub(channel(coordinator.port, tls(certs, "silo-1")))
    request = join_request(tiny_model)
    request.base_model_fingerprint = "0" * 64
    request.base_model_config_json = document
    error = refused(lambda: stub.Join(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert needle in (error.details() or "")


def test_echoed_task_ids_are_cut_short(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    hostile = "\x1b]0;owned\x07" + "x" * 10_000
    error = refused(lambda: silo.stub.UploadUpdate(update_stream(hostile, b"\0" * 64)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.details() or ""
    assert len(details) < 200 and "\x1b" not in details and "\x07" not in details
    silo.close()


def test_idle_connections_that_never_finish_tls_are_closed(quick: RunningCoordinator) -> None:
    sockets = [socket.create_connection(("127.0.0.1", quick.port), timeout=10) for _ in range(20)]
    try:
        for sock in sockets:
            assert sock.recv(1) == b""  # closed by the coordinator after its handshake timeout
    finally:
        for sock in sockets:
            sock.close()


HONEST = {"silo-1": 0.01, "silo-2": 0.02, "silo-3": 0.03, "silo-4": 0.04}


@pytest.fixture(scope="module")
def five_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("five-certs")
    create_federation(directory, hosts=["localhost"], silos=[*HONEST, "attacker"], admins=["admin"])
    return directory


@pytest.mark.parametrize(
    ("options", "bound"),
    [
        ({"max_weight_share": 0.25}, 0.25 * 0.5 + 0.75 * 0.04),
        ({"clip_median_factor": 1.0}, 0.04),
        ({"aggregator": "trimmed_mean", "trim_fraction": 0.2}, 0.04),
        ({"aggregator": "median"}, 0.04),
        ({"aggregator": "krum", "byzantine_silos": 1}, 0.04),
        ({"aggregator": "multi_krum", "byzantine_silos": 1}, 0.04),
        ({}, None),  # no defence: the probe really does take the model over
    ],
    ids=["share-cap", "median-clip", "trimmed-mean", "median", "krum", "multi-krum", "none"],
)
def test_a_hostile_silo_stays_within_the_honest_silos_influence(
    five_certs: Path,
    tiny_model: Path,
    tmp_path: Path,
    options: dict[str, object],
    bound: float | None,
) -> None:
    config = coordinator_config(five_certs, tiny_model, tmp_path / "checkpoints")
    with serve(config) as running:
        silos = {
            name: ProtocolSilo(
                running.port,
                tls(five_certs, name),
                tiny_model,
                num_samples=1000 if name == "attacker" else 10,
            )
            for name in [*HONEST, "attacker"]
        }
        spec = RunSpec(
            rounds=1, silos_per_round=5, min_silos=5, max_samples_per_silo=1000, **options
        )  # type: ignore[arg-type]
        admin_stub(running, five_certs).StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        start = _adapter(running)
        for name, silo in silos.items():
            task = silo.next_task()
            value = HONEST.get(name, 0.5)
            samples = 1000 if name == "attacker" else 10
            silo.upload(
                task, constant_delta(silo.download(task), value), num_samples=samples, steps=1
            )
        deadline = time.monotonic() + 30
        while running.federation.run is not None and running.federation.run.completed_rounds < 1:
            assert time.monotonic() < deadline, "the round did not complete"
            time.sleep(0.05)
        moved = max(float((t - start[n]).abs().max()) for n, t in _adapter(running).items())
        lowest = min(float((t - start[n]).min()) for n, t in _adapter(running).items())
        for silo in silos.values():
            silo.close()
    if bound is None:
        assert moved > 0.4  # the attacker's 1000 samples outweigh 4 x 10 honest ones
    else:
        assert moved <= bound + 1e-6, options
        assert lowest >= 0.01 - 1e-6, options
