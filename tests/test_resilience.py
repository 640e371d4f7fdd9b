"""Faults with real processes: a coordinator SIGKILLed mid-round resumes and ends bit for bit
where an uninterrupted run ends; silo agents are back within seconds of a coordinator restart;
a full checkpoint disk pauses the run until there is room, and start-run on a full disk is
refused cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.demo.federation import prepare, processes, start_coordinator, start_silo
from coordinator.run_state import RunSpec
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.coordinator.test_healing import seeded_delta
from tests.helpers import channel, download, join_request, update_stream, wire_payload


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ReconnectingSilo(threading.Thread):
    """A protocol-level silo that answers each training task with its seeded delta and joins
    again whenever its connection breaks (as an agent does)."""

    def __init__(self, port: int, files: TlsFiles, model: Path, name: str) -> None:
        super().__init__(daemon=True)
        self.port, self.files, self.model, self.name = port, files, model, name
        self.stop = threading.Event()
        self.max_round = 10**9  # tasks of later rounds wait until it is raised
        self.uploaded: list[int] = []  # rounds whose update the coordinator accepted

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(grpc.RpcError), channel(self.port, self.files) as chan:
                stub = pb_grpc.SiloStub(chan)
                joined = stub.Join(join_request(self.model), wait_for_ready=True, timeout=30)
                for task in stub.ReceiveTasks(pb.TaskStreamRequest(session_id=joined.session_id)):
                    self._answer(stub, task)
            self.stop.wait(0.2)

    def _answer(self, stub: pb_grpc.SiloStub, task: pb.RoundTask) -> None:
        while task.round > self.max_round and not self.stop.is_set():
            time.sleep(0.01)
        state = download(stub, task)
        payload = wire_payload(task, seeded_delta(state, self.name, task.round))
        stub.UploadUpdate(update_stream(task.task_id, payload))
        self.uploaded.append(task.round)


def _admin(workdir: Path, port: int) -> pb_grpc.AdminStub:
    return pb_grpc.AdminStub(channel(port, TlsFiles.in_directory(workdir / "certs", "admin")))


def _wait(admin: pb_grpc.AdminStub, done: object, timeout: float = 120) -> pb.RunStatus:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(grpc.RpcError):
            status = admin.GetStatus(pb.StatusRequest(), timeout=5)
            if done(status):  # type: ignore[operator]
                return status
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@contextlib.contextmanager
def _silos(workdir: Path, port: int, names: list[str]) -> Iterator[list[ReconnectingSilo]]:
    silos = [
        ReconnectingSilo(port, TlsFiles.in_directory(workdir / "certs", n), workdir / "model", n)
        for n in names
    ]
    for silo in silos:
        silo.start()
    try:
        yield silos
    finally:
        for silo in silos:
            silo.stop.set()


def _final_bytes(workdir: Path) -> bytes:
    run_dir = next((workdir / "checkpoints" / "runs").iterdir())
    latest = sorted(run_dir.glob("round-*"))[-1]
    assert latest.name == "round-00003"
    return b"".join(
        (latest / f).read_bytes() for f in ("adapter.safetensors", "strategy.safetensors")
    )


SPEC = RunSpec(rounds=3, silos_per_round=3, min_silos=3, strategy="fedadam", seed=5)


def _federate(workdir: Path, names: list[str], *, kill_in_round: int | None) -> bytes:
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    port = _free_port()
    with processes() as running, _silos(workdir, port, names) as silos:
        coordinator, _, _ = start_coordinator(workdir, logs, "--port", str(port))
        running.append(coordinator)
        admin = _admin(workdir, port)
        _wait(admin, lambda s: True)
        while len(admin.ListSilos(pb.StatusRequest()).silos) < len(names):
            time.sleep(0.1)
        admin.StartRun(pb.StartRunRequest(spec=SPEC.to_proto()))
        if kill_in_round is not None:
            while kill_in_round not in silos[0].uploaded:  # one update of the round is in
                time.sleep(0.01)
            coordinator.send_signal(signal.SIGKILL)
            coordinator.wait(30)
            restarted, _, _ = start_coordinator(workdir, logs, "--port", str(port))
            running.append(restarted)
        status = _wait(admin, lambda s: s.state != pb.RUN_STATE_RUNNING)
        assert status.state == pb.RUN_STATE_COMPLETED, status.message
    return _final_bytes(workdir)


def test_a_coordinator_killed_mid_round_ends_bit_identical(tmp_path: Path) -> None:
    names = prepare(tmp_path / "a", silos=3, family="idefics3", train=8, seed=1)
    prepare(tmp_path / "b", silos=3, family="idefics3", train=8, seed=1)
    uninterrupted = _federate(tmp_path / "a", names, kill_in_round=None)
    resumed = _federate(tmp_path / "b", names, kill_in_round=2)
    assert resumed == uninterrupted


def test_silo_agents_are_back_within_seconds_of_a_coordinator_restart(tmp_path: Path) -> None:
    workdir, logs = tmp_path, tmp_path / "logs"
    logs.mkdir()
    names = prepare(workdir, silos=2, family="idefics3", train=8, seed=2)
    port = _free_port()
    with processes() as running:
        coordinator, _, _ = start_coordinator(workdir, logs, "--port", str(port))
        running.append(coordinator)
        running.extend(start_silo(workdir, logs, n, port, threads=1) for n in names)
        admin = _admin(workdir, port)
        connected = lambda: sum(s.connected for s in admin.ListSilos(pb.StatusRequest()).silos)  # noqa: E731
        _wait(admin, lambda s: connected() == len(names), timeout=180)
        for _ in range(1):  # a restart after the silos' backoff has had time to grow
            coordinator.send_signal(signal.SIGKILL)
            coordinator.wait(30)
            time.sleep(6)
            coordinator, _, _ = start_coordinator(workdir, logs, "--port", str(port))
            running.append(coordinator)
            serving = time.monotonic()
            _wait(admin, lambda s: connected() == len(names), timeout=60)
            back = time.monotonic() - serving
            assert back < 10, f"silos took {back:.1f} s to come back"
            print(f"silos back {back:.1f} s after the coordinator served again")


def _mount_tmpfs(path: Path, size_kib: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def test_a_full_checkpoint_disk_pauses_the_run_until_there_is_room(tmp_path: Path) -> None:
    workdir = tmp_path
    names = prepare(workdir, silos=2, family="idefics3", train=8, seed=3)
    if os.geteuid() != 0 or not _mount_tmpfs(workdir / "checkpoints", 2048):
        pytest.skip("needs a tmpfs mount (root) to fill a disk")
    try:
        _fill_and_free(workdir, names)
    finally:
        subprocess.run(["umount", "-l", str(workdir / "checkpoints")], check=False)


def _fill(directory: Path, leave: int) -> Path:
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    filler = directory / "filler"
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))
    return filler


def _fill_and_free(workdir: Path, names: list[str]) -> None:
    logs = workdir / "logs"
    logs.mkdir()
    port = _free_port()
    with processes() as running, _silos(workdir, port, names) as silos:
        coordinator, _, _ = start_coordinator(workdir, logs, "--port", str(port))
        running.append(coordinator)
        admin = _admin(workdir, port)
        # no room at all (the first small write fails), then a little (the round's
        # checkpoint does not fit): either way a full disk, said as such
        for leave in (0, 4096):
            filler = _fill(workdir / "checkpoints", leave=leave)
            with pytest.raises(grpc.RpcError) as refused:
                admin.StartRun(pb.StartRunRequest(spec=SPEC.to_proto()))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, leave
            assert "full" in (refused.value.details() or ""), leave
            assert admin.GetStatus(pb.StatusRequest()).state == pb.RUN_STATE_IDLE
            filler.unlink()
        spec = RunSpec(rounds=2, silos_per_round=2, min_silos=2, seed=5)
        for silo in silos:
            silo.max_round = 1  # round 2's updates wait until the disk is full
        admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        _wait(admin, lambda s: s.completed_rounds >= 1)
        # round 2's updates are spooled over round 1's files (no new room); its save is not
        filler = _fill(workdir / "checkpoints", leave=16 * 1024)
        for silo in silos:
            silo.max_round = 2
        paused = _wait(admin, lambda s: s.state == pb.RUN_STATE_PAUSED)
        assert "full" in paused.message and paused.completed_rounds == 1
        filler.unlink()
        done = _wait(
            admin, lambda s: s.state != pb.RUN_STATE_RUNNING and s.state != pb.RUN_STATE_PAUSED
        )
        assert done.state == pb.RUN_STATE_COMPLETED and done.completed_rounds == 2
        assert not any(silo.is_alive() is False for silo in silos)
