"""At start-up, silo-agent and fedmllm-admin probe the coordinator once and say which problem
it is: unreachable (retried, a line per attempt), a certificate for another host name, another
CA, this certificate refused, revoked, or an incompatible model (exit 3 or 4). Real
certificates, a real coordinator on port 0, the commands as processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.demo.federation import tls_args
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator, serve
from shared.cli import EXIT_REFUSED
from shared.diagnosis import diagnose
from shared.pki import create_federation
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.cli.commands import BIN, clean_environment, run
from tests.conftest import coordinator_config, tls
from tests.helpers import ProtocolSilo, channel


@pytest.fixture(scope="module")
def elsewhere_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation whose coordinator certificate names only another host."""
    directory = tmp_path_factory.mktemp("elsewhere")
    create_federation(directory, hosts=["elsewhere.example"], silos=["silo-1"], admins=["admin"])
    return directory


@pytest.fixture
def elsewhere(
    elsewhere_certs: Path, tiny_model: Path, tmp_path: Path
) -> Iterator[RunningCoordinator]:
    with serve(coordinator_config(elsewhere_certs, tiny_model, tmp_path / "ckpt")) as running:
        yield running


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _silo(port: int, certs: Path, data: Path, model: Path, name: str = "silo-1") -> list[str]:
    return [
        "--data",
        str(data),
        "--model",
        str(model),
        "--coordinator",
        f"localhost:{port}",
        *tls_args(certs, name),
    ]


def _admin(port: int, certs: Path, *argv: str) -> list[str]:
    return [*argv, "--coordinator", f"localhost:{port}", *tls_args(certs, "admin")]


def test_admin_retries_an_unreachable_coordinator_then_gives_up(certs: Path) -> None:
    ran = run("fedmllm-admin", *_admin(_closed_port(), certs, "status", "--connect-wait", "1.5"))
    assert ran.code == 1 and "Traceback" not in ran.err
    lines = ran.err.splitlines()
    assert len(lines) == 2 and all("nothing listens at localhost:" in line for line in lines)
    assert "(attempt 1; next in 1 s)" in lines[0] and "(attempt 2, giving up)" in lines[1]


def test_silo_waits_for_an_unreachable_coordinator_a_line_per_attempt(
    certs: Path, tiny_model: Path, silo_data: dict[str, Path]
) -> None:
    argv = _silo(_closed_port(), certs, silo_data["silo-1"], tiny_model)
    agent = subprocess.Popen(
        [str(BIN / "silo-agent"), *argv],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    assert agent.stderr is not None
    try:
        lines = [agent.stderr.readline(), agent.stderr.readline()]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    assert all("WARNING silo[silo-1]" in line and "nothing listens at" in line for line in lines)
    assert "(attempt 1; next in 1 s)" in lines[0] and "(attempt 2; next in 2 s)" in lines[1]


@pytest.mark.parametrize("command", ["fedmllm-admin", "silo-agent"])
def test_a_certificate_for_another_host_name_says_the_names_it_holds(
    command: str,
    elsewhere: RunningCoordinator,
    elsewhere_certs: Path,
    tiny_model: Path,
    silo_data: dict[str, Path],
) -> None:
    if command == "fedmllm-admin":
        argv = _admin(elsewhere.port, elsewhere_certs, "runs")
    else:
        argv = _silo(elsewhere.port, elsewhere_certs, silo_data["silo-1"], tiny_model)
    ran = run(command, *argv)
    assert ran.code == 4, ran.err
    line = ran.one_line()
    assert "the coordinator's certificate is not valid for 'localhost'" in line
    assert "it names elsewhere.example" in line
    assert "fedmllm-certs init --ca-dir PKI --hosts elsewhere.example,localhost" in line


def test_a_coordinator_of_another_ca_is_named_as_such(
    coordinator: RunningCoordinator, foreign_certs: Path
) -> None:
    ran = run("fedmllm-admin", *_admin(coordinator.port, foreign_certs, "status"))
    assert ran.code == 4, ran.err
    line = ran.one_line()
    assert "presents a certificate from another CA" in line and "ca.pem of this federation" in line


def test_a_certificate_the_coordinator_does_not_trust_is_refused_in_the_handshake(
    coordinator: RunningCoordinator, certs: Path, foreign_certs: Path, tmp_path: Path
) -> None:
    """This side trusts the coordinator's CA, but its own certificate is of another CA."""
    both = tmp_path / "both-cas.pem"
    both.write_bytes((certs / "ca.pem").read_bytes() + (foreign_certs / "ca.pem").read_bytes())
    files = TlsFiles(cert=foreign_certs / "silo-1.pem", key=foreign_certs / "silo-1.key", ca=both)
    finding = diagnose(f"localhost:{coordinator.port}", files, probe=lambda *_: None)
    assert finding.code == EXIT_REFUSED
    assert "closes the connection right after the TLS handshake" in finding.message


def test_a_revoked_silo_stops_at_once_with_exit_3(
    coordinator: RunningCoordinator,
    certs: Path,
    tiny_model: Path,
    silo_data: dict[str, Path],
) -> None:
    ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model).close()
    with channel(coordinator.port, tls(certs, "admin")) as admin:
        pb_grpc.AdminStub(admin).RevokeSilo(pb.SiloRequest(silo_id="silo-1", reason="stolen"))
    ran = run("silo-agent", *_silo(coordinator.port, certs, silo_data["silo-1"], tiny_model))
    assert ran.code == 3, ran.err
    line = ran.one_line()
    assert "refused by the coordinator (PERMISSION_DENIED)" in line and "revoked" in line


def test_a_silo_of_another_model_is_refused_with_exit_3(
    coordinator: RunningCoordinator,
    certs: Path,
    tiny_llava: Path,
    silo_data: dict[str, Path],
) -> None:
    ran = run("silo-agent", *_silo(coordinator.port, certs, silo_data["silo-1"], tiny_llava))
    assert ran.code == 3, ran.err
    last = ran.err.splitlines()[-1]
    assert "Traceback" not in ran.err and last.startswith("silo-agent: refused by the coordinator")
    assert "model_type" in last


def test_ctrl_c_in_follow_ends_in_one_line_and_the_run_goes_on(
    coordinator: RunningCoordinator, certs: Path
) -> None:
    with channel(coordinator.port, tls(certs, "admin")) as admin:
        started = pb_grpc.AdminStub(admin).StartRun(
            pb.StartRunRequest(spec=RunSpec(rounds=1).to_proto())
        )
    follow = subprocess.Popen(
        [str(BIN / "fedmllm-admin"), *_admin(coordinator.port, certs, "status", "--follow")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    assert follow.stdout is not None
    headline = follow.stdout.readline()
    follow.send_signal(signal.SIGINT)
    _, err = follow.communicate(timeout=30)
    assert headline.startswith(f"run {started.run_id}: running")
    assert follow.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert f"stopped following; run {started.run_id} goes on" in err


def test_an_unfinished_run_of_another_model_stops_the_coordinator_with_exit_4(
    certs: Path, tiny_model: Path, tiny_llava: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "ckpt")) as running:
        running.federation.start_run(RunSpec(rounds=1))
        time.sleep(0.2)
    argv = ["--model", str(tiny_llava), "--checkpoint-dir", str(tmp_path / "ckpt")]
    argv += [*tls_args(certs, "coordinator"), "--port", "0", "--metrics-port", "-1"]
    ran = run("fedmllm-coordinator", *argv)
    assert ran.code == 4, ran.err
    last = ran.err.splitlines()[-1]
    assert "Traceback" not in ran.err and "does not fit this coordinator" in last
    assert "--abandon-run" in last
