"""Rounds over real gRPC and TLS: task dispatch, download, validated uploads, aggregation.

The silo here is a protocol-level client (tests/helpers.py) so that tests can send exactly the
malformed streams a faulty or hostile silo could send.
"""

from __future__ import annotations

import contextlib
import math
import queue
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from coordinator.aggregation import sums as sums_module
from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator, serve
from shared.payload import PayloadDigest
from shared.tensor_codec import StateDict, encode_state
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import coordinator_config, tls
from tests.helpers import (
    ProtocolSilo,
    admin_stub,
    channel,
    constant_delta,
    failing_spool_reads,
    join_request,
    refused,
    update_stream,
)


def _start(admin: pb_grpc.AdminStub, **spec: object) -> pb.RunStatus:
    values = {"rounds": 1, "silos_per_round": 2, "min_silos": 2, "round_deadline_s": 30.0, **spec}
    return admin.StartRun(pb.StartRunRequest(spec=RunSpec(**values).to_proto()))  # type: ignore[arg-type]


def _wait_rounds(admin: pb_grpc.AdminStub, rounds: int, timeout: float = 30) -> pb.RunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = admin.GetStatus(pb.StatusRequest())
        last = rounds == status.spec.rounds
        if status.state == pb.RUN_STATE_FAILED or (
            status.completed_rounds >= rounds
            and not (last and status.state == pb.RUN_STATE_RUNNING)
        ):
            return status
        time.sleep(0.05)
    raise TimeoutError(f"round {rounds} did not complete")


@pytest.fixture
def two_silos(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> Iterator[list[ProtocolSilo]]:
    silos = [
        ProtocolSilo(coordinator.port, tls(certs, name), tiny_model, num_samples=n)
        for name, n in (("silo-1", 30), ("silo-2", 10))
    ]
    yield silos
    for silo in silos:
        silo.close()


def _assert_moved_by(adapter: StateDict, downloaded: StateDict, step: float) -> None:
    """Silos download bfloat16 (the default wire dtype) while the master weights stay
    float32: the new adapter is the download + `step` up to the download's rounding."""
    for name, before in downloaded.items():
        assert before.dtype == torch.bfloat16 and adapter[name].dtype == torch.float32
        rounding = float(before.float().abs().max()) * 2**-8
        torch.testing.assert_close(adapter[name], before.float() + step, atol=rounding, rtol=0)


def test_round_aggregates_sample_weighted_and_checkpoints(
    coordinator: RunningCoordinator, certs: Path, two_silos: list[ProtocolSilo], tmp_path: Path
) -> None:
    admin = admin_stub(coordinator, certs)
    _start(admin)
    tasks = [silo.next_task() for silo in two_silos]
    assert {t.round for t in tasks} == {1}
    start = two_silos[0].download(tasks[0])
    assert torch.equal(start[next(iter(start))], two_silos[1].download(tasks[1])[next(iter(start))])
    two_silos[0].upload(tasks[0], constant_delta(start, 1.0), num_samples=30)
    two_silos[1].upload(tasks[1], constant_delta(start, -1.0), num_samples=10)
    status = _wait_rounds(admin, 1)
    assert status.state == pb.RUN_STATE_COMPLETED
    assert list(status.history[0].contributed) == ["silo-1", "silo-2"]
    assert status.history[0].num_samples == 40
    saved = CheckpointStore(tmp_path / "checkpoints").load_latest()
    assert saved is not None and saved.round == 1
    _assert_moved_by(saved.adapter, start, 0.5)  # (30 * 1 + 10 * -1) / 40 = 0.5
    values = sum(t.numel() for t in start.values())  # the record: the mean delta's norm
    assert status.history[0].update_norm == pytest.approx(0.5 * math.sqrt(values), rel=1e-9)
    metric = coordinator.federation.metrics.registry.get_sample_value
    # silo-1, first in the fold's order, streamed in while next: folded live (silo-2 too
    # if silo-1's fold was done before silo-2's last chunk)
    live = metric("fedmllm_updates_folded_live_total") or 0
    assert live >= 1 and live + (metric("fedmllm_updates_folded_carried_total") or 0) <= 2
    assert metric("fedmllm_fold_rebuilds_total") == 0
    # each accepted update's fold timed once: at its arrival plus what it added as it streamed
    assert metric("fedmllm_phase_duration_seconds_count", {"phase": "fold"}) == 2
    assert metric("fedmllm_phase_duration_seconds_sum", {"phase": "fold"}) > 0


def _one_answering(
    coordinator: RunningCoordinator, certs: Path, two_silos: list[ProtocolSilo]
) -> tuple[pb_grpc.AdminStub, ProtocolSilo, pb.RoundTask, StateDict]:
    """A round of two silos of which only silo-1 answers (the round ends at its 5 s
    deadline): the admin, silo-1, its task and the adapter it downloaded."""
    admin = admin_stub(coordinator, certs)
    _start(admin, min_silos=1, round_deadline_s=5.0)
    silo, other = two_silos
    task = silo.next_task()
    other.next_task()
    return admin, silo, task, silo.download(task)


def test_malformed_updates_never_touch_the_global_adapter(
    coordinator: RunningCoordinator, certs: Path, two_silos: list[ProtocolSilo], tmp_path: Path
) -> None:
    """silo-1 is first in the fold's order, so its streams are folded live: the truncated
    one and the one with a wrong CRC-32 are in the running sum when they are refused, and
    must be rebuilt out of it."""
    admin, silo, task, start = _one_answering(coordinator, certs, two_silos)
    other = two_silos[1]
    good = encode_state(constant_delta(start, 0.25))
    cases = {
        "truncated": dict(chunks=[good[: len(good) // 2]]),
        "crc32": dict(announced=PayloadDigest(len(good), crc32=zlib.crc32(good) ^ 1)),
        "sha256": dict(announced=PayloadDigest(len(good), sha256="0" * 64)),
        "unchecked": dict(announced=PayloadDigest(len(good))),  # and no trailer
    }
    for name, kwargs in cases.items():
        error = refused(
            lambda kwargs=kwargs: silo.stub.UploadUpdate(
                update_stream(task.task_id, good, **kwargs)
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    first = next(iter(start))
    wrong_shape = dict(constant_delta(start, 0.25))
    wrong_shape[first] = torch.zeros(3, 3, dtype=start[first].dtype)
    non_finite = dict(constant_delta(start, 0.25))
    non_finite[first] = non_finite[first].clone().fill_(float("nan"))
    wrong_dtype = dict(constant_delta(start, 0.25))
    wrong_dtype[first] = wrong_dtype[first].to(torch.float16)
    missing = dict(constant_delta(start, 0.25))
    missing.pop(first)
    for label, delta, needle in (
        ("shape", wrong_shape, "shape [3, 3]"),
        ("nan", non_finite, "NaN"),
        ("dtype", wrong_dtype, "dtype float16"),
        ("missing", missing, "missing"),
    ):
        payload = encode_state(delta)  # as given, not cast to the run's wire dtype
        error = refused(lambda p=payload: silo.stub.UploadUpdate(update_stream(task.task_id, p)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert needle in (error.details() or ""), (label, error.details())
    silo.upload(task, constant_delta(start, 0.25))
    duplicate = refused(lambda: silo.upload(task, constant_delta(start, 0.25)))
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS
    stolen = refused(lambda: other.upload(task, constant_delta(start, 9.0)))
    assert stolen.code() == grpc.StatusCode.PERMISSION_DENIED
    status = _wait_rounds(admin, 1)
    assert status.history[0].rejected == 8
    assert list(status.history[0].contributed) == ["silo-1"]
    metric = coordinator.federation.metrics.registry.get_sample_value
    # the first refused stream was folded live: one rebuild, and no live fold after it
    assert metric("fedmllm_fold_rebuilds_total") == 1
    assert metric("fedmllm_updates_folded_live_total") == 0
    assert metric("fedmllm_updates_folded_carried_total") == 0
    saved = CheckpointStore(tmp_path / "checkpoints").load_latest()
    assert saved is not None
    _assert_moved_by(saved.adapter, start, 0.25)
    late = refused(lambda: silo.upload(task, constant_delta(start, 0.25)))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_header_cut_after_its_length_is_read_and_hostile_headers_are_refused(
    coordinator: RunningCoordinator, certs: Path, two_silos: list[ProtocolSilo], tmp_path: Path
) -> None:
    """A safetensors header may arrive cut anywhere, even right after its 8-byte length; a
    header of length 0, or JSON nested beyond what the parser descends, is refused as
    malformed with INVALID_ARGUMENT (not UNKNOWN and a traceback)."""
    admin, silo, task, start = _one_answering(coordinator, certs, two_silos)
    deep = b"[" * 20_000 + b"]" * 20_000
    for label, payload, needle in (
        ("empty", struct.pack("<Q", 0) + b"{}", "safetensors header of 0 bytes"),
        ("deep", struct.pack("<Q", len(deep)) + deep, "nested too deeply"),
    ):
        error = refused(lambda p=payload: silo.stub.UploadUpdate(update_stream(task.task_id, p)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert needle in (error.details() or ""), (label, error.details())
    good = encode_state(constant_delta(start, 0.25))
    silo.stub.UploadUpdate(update_stream(task.task_id, good, chunks=[good[:8], good[8:]]))
    status = _wait_rounds(admin, 1)
    assert status.history[0].rejected == 2
    assert list(status.history[0].contributed) == ["silo-1"]
    saved = CheckpointStore(tmp_path / "checkpoints").load_latest()
    assert saved is not None
    _assert_moved_by(saved.adapter, start, 0.25)


def test_an_update_that_fails_to_fold_after_its_receipt_redoes_the_attempt(
    coordinator: RunningCoordinator,
    certs: Path,
    two_silos: list[ProtocolSilo],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receipt comes once an update is verified and spooled; its fold follows. A read
    error while folding (a failing disk, injected here: one cannot be produced) leaves part of
    it in the running sum, so the attempt is never concluded but redone from a fresh sum.
    A fixed norm bound makes the update wait for its norm, so it is folded from its spool
    after its receipt (an update folded live as it streams in is refused instead)."""
    admin = admin_stub(coordinator, certs)
    _start(admin, silos_per_round=1, min_silos=1, clip_norm=1e6)
    monkeypatch.setattr(sums_module, "FOLD_BLOCK", 64)  # several reads per update
    failing_spool_reads(monkeypatch, lambda reads: len(reads) == 2)  # part of it is in the sum
    silos = {s.joined.silo_id: s for s in two_silos}
    task, first = _task_of_either(silos)
    start = first.download(task)
    first.upload(task, constant_delta(start, 5.0))  # receipted, then fails to fold
    retry, second = _task_of_either(silos)
    assert retry.round == 1 and retry.task_id != task.task_id
    start = second.download(retry)
    second.upload(retry, constant_delta(start, 0.25))
    status = _wait_rounds(admin, 1)
    assert list(status.history[0].contributed) == [second.joined.silo_id]
    assert "did not fold (OSError" in status.history[0].reselections[0]
    saved = CheckpointStore(tmp_path / "checkpoints").load_latest()
    assert saved is not None
    _assert_moved_by(saved.adapter, start, 0.25)  # nothing of the 5.0 update stayed


def _task_of_either(silos: dict[str, ProtocolSilo]) -> tuple[pb.RoundTask, ProtocolSilo]:
    """The next task sent to whichever silo was selected."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for silo in silos.values():
            with contextlib.suppress(queue.Empty):
                return silo.tasks.get(timeout=0.05), silo
    raise AssertionError("no silo got a task")


def test_incompatible_base_model_is_refused_saying_what_differs(
    coordinator: RunningCoordinator, certs: Path, tiny_llava: Path
) -> None:
    with channel(coordinator.port, tls(certs, "silo-1")) as chan:
        error = refused(lambda: pb_grpc.SiloStub(chan).Join(join_request(tiny_llava)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model_type" in (error.details() or "")


def test_different_adapter_layout_is_refused(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    request = join_request(tiny_model)
    request.adapter_layout[0].shape[0] = 16
    with channel(coordinator.port, tls(certs, "silo-1")) as chan:
        error = refused(lambda: pb_grpc.SiloStub(chan).Join(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "adapter layout differs" in (error.details() or "")


def test_invalid_run_spec_and_double_start_are_refused(
    coordinator: RunningCoordinator, certs: Path
) -> None:
    admin = admin_stub(coordinator, certs)
    bad = refused(lambda: _start(admin, min_silos=5))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "min_silos" in (bad.details() or "")
    _start(admin)
    again = refused(lambda: _start(admin))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    stopped = admin.StopRun(pb.StopRequest())
    assert stopped.state == pb.RUN_STATE_STOPPED
    assert refused(lambda: admin.StopRun(pb.StopRequest())).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_restarted_coordinator_resumes_after_the_last_completed_round(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    config = coordinator_config(certs, tiny_model, tmp_path / "checkpoints")
    with serve(config) as first:
        admin = admin_stub(first, certs)
        silo = ProtocolSilo(first.port, tls(certs, "silo-1"), tiny_model)
        run_id = _start(admin, rounds=3, silos_per_round=1, min_silos=1).run_id
        task = silo.next_task()
        start = silo.download(task)
        silo.upload(task, constant_delta(start, 0.5))
        _wait_rounds(admin, 1)
        silo.next_task()  # round 2 is open when the coordinator goes down
        silo.close()
    with serve(config) as second:
        admin = admin_stub(second, certs)
        status = admin.GetStatus(pb.StatusRequest())
        assert (status.run_id, status.state, status.completed_rounds) == (
            run_id,
            pb.RUN_STATE_RUNNING,
            1,
        )
        silo = ProtocolSilo(second.port, tls(certs, "silo-1"), tiny_model)
        task = silo.next_task()
        assert task.round == 2
        resumed = silo.download(task)
        for name, before in start.items():
            torch.testing.assert_close(resumed[name], before + 0.5)
        silo.close()


def test_metrics_endpoint_reports_rounds_and_bytes(
    coordinator: RunningCoordinator, certs: Path, two_silos: list[ProtocolSilo]
) -> None:
    import urllib.request

    admin = admin_stub(coordinator, certs)
    _start(admin)
    sizes = []
    for silo in two_silos:
        task = silo.next_task()
        delta = constant_delta(silo.download(task), 0.1)
        sizes.append(len(encode_state(delta)))
        silo.upload(task, delta)
    status = _wait_rounds(admin, 1)
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["fedmllm_rounds_completed_total"] == 1
    assert values["fedmllm_round"] == 1
    assert values["fedmllm_silos_connected"] == 2
    assert values["fedmllm_received_bytes_total"] == sum(sizes)
    assert values["fedmllm_sent_bytes_total"] == status.history[0].bytes_sent > 0
    assert values["fedmllm_round_duration_seconds_count"] == 1
    assert values['fedmllm_phase_duration_seconds_count{phase="aggregation"}'] == 1
