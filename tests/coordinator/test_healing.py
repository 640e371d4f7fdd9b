"""Runs that heal: the same run ends bit for bit the same whatever order updates arrive in;
stragglers are passed over and noted, hung silos shown; a silo that drops out mid-round is
waited for; a run that gave up waiting can be resumed; a run stays pinned to its base model."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch

from coordinator.base_model import RunMismatch
from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunSpec
from coordinator.selection import choose, round_rng
from coordinator.server import serve
from shared.pki import create_federation
from shared.tensor_codec import StateDict
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import coordinator_config, tls
from tests.helpers import ProtocolSilo, admin_stub, channel, join_request

NAMES = ["silo-a", "silo-b", "silo-c"]


@pytest.fixture(scope="module")
def abc_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("abc-certs")
    create_federation(directory, hosts=["localhost"], silos=NAMES, admins=["admin"])
    return directory


def seeded_delta(like: StateDict, silo: str, round_index: int) -> StateDict:
    """A delta that depends only on the silo and the round: what a deterministic silo sends."""
    seed = int(hashlib.sha256(f"{silo}/{round_index}".encode()).hexdigest()[:8], 16)
    generator = torch.Generator().manual_seed(seed)
    return {k: 0.01 * torch.randn(v.shape, generator=generator) for k, v in sorted(like.items())}


@contextmanager
def answering(silos: dict[str, ProtocolSilo]) -> Iterator[None]:
    """Each silo answers every training task it gets with its seeded delta, in a thread."""
    stop = threading.Event()

    def serve_tasks(name: str, silo: ProtocolSilo) -> None:
        while not stop.is_set():
            try:
                task = silo.next_task(timeout=0.2)
            except queue.Empty:
                continue
            with contextlib.suppress(grpc.RpcError):  # late: the attempt closed meanwhile
                silo.upload(task, seeded_delta(silo.download(task), name, task.round))

    threads = [threading.Thread(target=serve_tasks, args=i, daemon=True) for i in silos.items()]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)


def _wait(admin: pb_grpc.AdminStub, done: object, timeout: float = 60) -> pb.RunStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = admin.GetStatus(pb.StatusRequest())
        if done(status):  # type: ignore[operator]
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def _fedadam_run(certs: Path, model: Path, state: Path, order: list[str]) -> bytes:
    """Three rounds of FedAdam where every round's updates arrive in `order`."""
    with serve(coordinator_config(certs, model, state)) as running:
        silos = {n: ProtocolSilo(running.port, tls(certs, n), model) for n in NAMES}
        spec = RunSpec(rounds=3, silos_per_round=3, min_silos=3, strategy="fedadam", seed=7)
        admin = admin_stub(running, certs)
        admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        for round_index in (1, 2, 3):
            tasks = {n: s.next_task() for n, s in silos.items()}
            for name in order:  # one after the other: each lands before the next is sent
                task = tasks[name]
                delta = seeded_delta(silos[name].download(task), name, round_index)
                silos[name].upload(task, delta)
        _wait(admin, lambda s: s.state == pb.RUN_STATE_COMPLETED)
        for silo in silos.values():
            silo.close()
    run_dir = next((state / "runs").iterdir())
    latest = sorted(run_dir.glob("round-*"))[-1]
    return (latest / "adapter.safetensors").read_bytes() + (
        latest / "strategy.safetensors"
    ).read_bytes()


def test_the_same_run_ends_bit_identical_whatever_the_arrival_order(
    abc_certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    forward = _fedadam_run(abc_certs, tiny_model, tmp_path / "a", ["silo-a", "silo-b", "silo-c"])
    backward = _fedadam_run(abc_certs, tiny_model, tmp_path / "b", ["silo-c", "silo-b", "silo-a"])
    assert forward == backward


def _seed_selecting(silo: str, k: int) -> int:
    """A run seed whose first attempt of round 1 selects `silo` among k of NAMES."""
    return next(s for s in range(100) if silo in choose(NAMES, k, round_rng(s, 1, 0), last=set()))


def test_a_straggler_is_passed_over_noted_and_shown_hung(
    abc_certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    config = coordinator_config(abc_certs, tiny_model, tmp_path / "state")
    with serve(config) as running:
        silos = {n: ProtocolSilo(running.port, tls(abc_certs, n), tiny_model) for n in NAMES}
        mute = silos["silo-a"]  # takes its task, says it is training, never answers
        seed = _seed_selecting("silo-a", 2)
        spec = RunSpec(rounds=2, silos_per_round=2, min_silos=2, round_deadline_s=2, seed=seed)
        admin = admin_stub(running, abc_certs)
        admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        mute.next_task()
        beat = pb.HeartbeatRequest(session_id=mute.joined.session_id, state="training round 1")
        mute.stub.Heartbeat(beat)
        honest = {n: s for n, s in silos.items() if n != "silo-a"}
        with answering(honest):
            status = _wait(admin, lambda s: s.state != pb.RUN_STATE_RUNNING)
        assert status.state == pb.RUN_STATE_COMPLETED, status.message
        first = status.history[0]
        assert list(first.contributed) == ["silo-b", "silo-c"]
        assert len(first.reselections) == 1 and "no update from silo-a" in first.reselections[0]
        assert "silo-a" not in first.selected  # not asked again in the next attempt
        assert "silo-a" not in status.history[1].selected  # asked last while others can answer
        time.sleep(0.5)
        notes = {s.silo_id: list(s.notes) for s in admin.ListSilos(pb.StatusRequest()).silos}
        assert any("straggler: missed round 1" in n for n in notes["silo-a"])
        for silo in silos.values():
            silo.close()


def test_hung_silos_are_shown(abc_certs: Path, tiny_model: Path, tmp_path: Path) -> None:
    with serve(coordinator_config(abc_certs, tiny_model, tmp_path / "state")) as running:
        silo = ProtocolSilo(running.port, tls(abc_certs, "silo-a"), tiny_model)
        admin = admin_stub(running, abc_certs)
        spec = RunSpec(rounds=1, silos_per_round=1, min_silos=1, round_deadline_s=0.5)
        admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        silo.next_task()
        beat = pb.HeartbeatRequest(session_id=silo.joined.session_id, state="training round 1")
        silo.stub.Heartbeat(beat)
        deadline = time.monotonic() + 10
        while True:
            silo.stub.Heartbeat(beat)
            (info,) = admin.ListSilos(pb.StatusRequest()).silos
            if any(n.startswith("hung: 'training round 1'") for n in info.notes):
                break
            assert time.monotonic() < deadline, list(info.notes)
            time.sleep(0.2)
        status = admin.GetStatus(pb.StatusRequest())
        assert "1 silos connected" in status.waiting_reason or status.round_progress
        silo.close()


def test_a_silo_that_drops_out_mid_round_is_waited_for(
    abc_certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(abc_certs, tiny_model, tmp_path / "state")) as running:
        first = ProtocolSilo(running.port, tls(abc_certs, "silo-a"), tiny_model)
        other = ProtocolSilo(running.port, tls(abc_certs, "silo-b"), tiny_model)
        spec = RunSpec(rounds=1, silos_per_round=2, min_silos=2, round_deadline_s=30)
        admin = admin_stub(running, abc_certs)
        admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        task = first.next_task()
        first.close()  # the network drops: its stream ends mid-round
        time.sleep(1.5)
        again = ProtocolSilo(running.port, tls(abc_certs, "silo-a"), tiny_model)
        owed = again.next_task()
        assert owed.task_id == task.task_id
        again.upload(owed, seeded_delta(again.download(owed), "silo-a", 1))
        task_b = other.next_task()
        other.upload(task_b, seeded_delta(other.download(task_b), "silo-b", 1))
        status = _wait(admin, lambda s: s.state != pb.RUN_STATE_RUNNING)
        assert status.state == pb.RUN_STATE_COMPLETED
        assert list(status.history[0].reselections) == []  # no attempt was used up
        again.close()
        other.close()


def test_a_run_that_gave_up_waiting_resumes_from_its_last_round(
    abc_certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(abc_certs, tiny_model, tmp_path / "state")) as running:
        lone = ProtocolSilo(running.port, tls(abc_certs, "silo-a"), tiny_model)
        admin = admin_stub(running, abc_certs)
        spec = RunSpec(rounds=1, silos_per_round=2, min_silos=2, wait_timeout_s=1.5)
        started = admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        status = _wait(admin, lambda s: s.state == pb.RUN_STATE_FAILED)
        assert "gave up after waiting 1.5 s" in status.message
        assert "1 of 2 silos available" in status.message
        second = ProtocolSilo(running.port, tls(abc_certs, "silo-b"), tiny_model)
        admin.ResumeRun(pb.StopRequest(run_id=started.run_id))
        for silo, name in ((lone, "silo-a"), (second, "silo-b")):
            task = silo.next_task()
            silo.upload(task, seeded_delta(silo.download(task), name, 1))
        status = _wait(admin, lambda s: s.state != pb.RUN_STATE_RUNNING)
        assert status.state == pb.RUN_STATE_COMPLETED and status.run_id == started.run_id
        lone.close()
        second.close()


def test_a_silo_with_other_base_weights_is_refused(
    abc_certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(abc_certs, tiny_model, tmp_path / "state")) as running:
        request = join_request(tiny_model)
        request.base_model_weights_fingerprint = "a" * 64
        first = ProtocolSilo(running.port, tls(abc_certs, "silo-a"), tiny_model, request=request)
        admin = admin_stub(running, abc_certs)
        started = admin.StartRun(pb.StartRunRequest(spec=RunSpec(rounds=5).to_proto()))
        assert started.base_model_weights_fingerprint == "a" * 64
        other = join_request(tiny_model)
        other.base_model_weights_fingerprint = "b" * 64
        stub = pb_grpc.SiloStub(channel(running.port, tls(abc_certs, "silo-b")))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Join(other)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "base model weights differ" in (refused.value.details() or "")
        admin.StopRun(pb.StopRequest())
        first.close()


def test_a_coordinator_with_another_model_refuses_the_unfinished_run(
    abc_certs: Path, tiny_model: Path, tiny_llava: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with serve(coordinator_config(abc_certs, tiny_model, state)) as running:
        started = admin_stub(running, abc_certs).StartRun(
            pb.StartRunRequest(spec=RunSpec(rounds=3).to_proto())
        )
    other = coordinator_config(abc_certs, tiny_llava, state)
    with (
        pytest.raises(RunMismatch, match="base model differs: architectures") as refused,
        serve(other),
    ):
        pass
    assert 'model_type: "llava", expected "idefics3"' in str(refused.value)
    assert "--abandon-run" in str(refused.value)
    with serve(replace(other, abandon_run=True)) as running:
        status = admin_stub(running, abc_certs).GetStatus(pb.StatusRequest(run_id=started.run_id))
        assert status.state == pb.RUN_STATE_STOPPED and "abandoned" in status.message


def test_leftover_temporary_files_are_cleared_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "runs" / "r" / "round-00001").mkdir(parents=True)
    leftovers = [tmp_path / f".current.tmp-{n}" for n in (11, 12)] + [
        tmp_path / "runs" / "r" / "round-00001" / ".run.json.tmp-9"
    ]
    for path in leftovers:
        path.write_text("half")
    store = CheckpointStore(tmp_path)
    store.lock()
    assert not [p for p in leftovers if p.exists()]
    store.unlock()
