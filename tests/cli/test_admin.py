"""fedmllm-admin as an operator uses it: connection settings from flags before or after the
command, from the environment or from the bundle fedmllm-certs hands out; --json on every
read command; --run for kept runs; --follow with JSON lines; defaults and choices in --help."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.demo.federation import tls_args
from coordinator.server import RunningCoordinator
from tests.cli.commands import BIN, clean_environment, run
from tests.conftest import tls
from tests.helpers import ProtocolSilo, constant_delta


def _target(coordinator: RunningCoordinator) -> list[str]:
    return ["--coordinator", f"localhost:{coordinator.port}"]


def _admin_json(coordinator: RunningCoordinator, certs: Path, *argv: str) -> object:
    ran = run("fedmllm-admin", *argv, "--json", *_target(coordinator), *tls_args(certs, "admin"))
    assert ran.code == 0, ran.err
    return json.loads(ran.out)


def test_options_before_or_after_the_command(coordinator: RunningCoordinator, certs: Path) -> None:
    connection = [*_target(coordinator), *tls_args(certs, "admin")]
    before = run("fedmllm-admin", *connection, "runs")
    after = run("fedmllm-admin", "runs", *connection)
    split = run("fedmllm-admin", *connection[:4], "runs", *connection[4:])
    assert before.code == after.code == split.code == 0, before.err + after.err + split.err
    assert before.out == after.out == split.out == "no runs kept by this coordinator yet\n"


def test_connection_settings_from_the_environment(
    coordinator: RunningCoordinator, certs: Path
) -> None:
    env = clean_environment(
        FEDMLLM_COORDINATOR=f"localhost:{coordinator.port}",
        FEDMLLM_CERT=str(certs / "admin.pem"),
        FEDMLLM_KEY=str(certs / "admin.key"),
        FEDMLLM_CA=str(certs / "ca.pem"),
    )
    ran = run("fedmllm-admin", "status", env=env)
    assert ran.code == 0 and ran.out.startswith("run -: idle"), ran.err
    flagged = run("fedmllm-admin", "status", "--key", str(certs / "silo-1.key"), env=env)
    assert flagged.code == 4 and "does not belong to certificate" in flagged.one_line()


def test_the_bundle_directory_is_a_profile(
    coordinator: RunningCoordinator, certs: Path, tmp_path: Path
) -> None:
    """What `fedmllm-certs sign` sends (NAME.pem, ca.pem, coordinator-address) plus the key."""
    bundle = tmp_path / "ops"
    bundle.mkdir()
    for name in ("admin.pem", "admin.key", "ca.pem"):
        shutil.copy(certs / name, bundle / name)
    (bundle / "coordinator-address").write_text(f"localhost:{coordinator.port}\n")
    ran = run("fedmllm-admin", "--profile", str(bundle), "list-silos", "--json")
    assert ran.code == 0 and json.loads(ran.out) == {"silos": []}, ran.err
    profile = tmp_path / "admin.yaml"
    profile.write_text(
        f"coordinator: localhost:{coordinator.port}\ncert: ops/admin.pem\nkey: ops/admin.key\n"
        "ca: ops/ca.pem\n"
    )
    env = clean_environment(FEDMLLM_PROFILE=str(profile))
    assert run("fedmllm-admin", "runs", "--json", env=env).out == '{"runs": []}\n'


def test_json_status_runs_and_a_kept_runs_adapter(
    coordinator: RunningCoordinator, certs: Path, tmp_path: Path
) -> None:
    connection = [*_target(coordinator), *tls_args(certs, "admin")]
    started = run("fedmllm-admin", "start-run", "--rounds", "3", *connection)
    first = started.out.split()[1]
    assert run("fedmllm-admin", "stop", *connection).code == 0
    assert run("fedmllm-admin", "start-run", "--rounds", "4", *connection).code == 0
    status = _admin_json(coordinator, certs, "status", "--run", first)
    assert isinstance(status, dict)
    assert status["run_id"] == first and status["state"] == "RUN_STATE_STOPPED"
    assert status["spec"]["rounds"] == 3
    runs = _admin_json(coordinator, certs, "runs")
    assert isinstance(runs, dict)
    assert [r["rounds"] for r in sorted(runs["runs"], key=lambda r: r["started_at"])] == [3, 4]
    out = tmp_path / "adapter"
    exported = run("fedmllm-admin", "export", "--run", first, "--out", str(out), *connection)
    assert exported.out == f"round 0 of run {first} written to {out}\n", exported.err
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    missing = run("fedmllm-admin", "status", "--run", "run-nope", *connection)
    assert missing.code == 2 and "fedmllm-admin runs lists the kept runs" in missing.one_line()


def test_follow_prints_json_lines_per_round_then_the_status(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    argv = ["start-run", "--rounds", "1", "--silos-per-round", "1", "--follow", "--json"]
    argv += [*_target(coordinator), *tls_args(certs, "admin")]
    follow = subprocess.Popen(
        [str(BIN / "fedmllm-admin"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    try:
        task = silo.next_task(timeout=60)
        silo.upload(task, constant_delta(silo.download(task), 0.25))
        out, err = follow.communicate(timeout=60)
    finally:
        silo.close()
    lines = [json.loads(line) for line in out.splitlines()]
    assert follow.returncode == 0, err
    assert lines[0]["started"]["state"] == "RUN_STATE_RUNNING"
    assert lines[1]["round"]["contributed"] == ["silo-1"] and lines[1]["round"]["round"] == 1
    assert lines[-1]["status"]["state"] == "RUN_STATE_COMPLETED"


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["fedmllm-admin", "start-run"], ["--rounds INT", "(default: 5)", "{fedavg,fedavgm,"]),
        (["fedmllm-admin", "start-run"], ["--deadline FLOAT", "(default: 600.0)", "> 0 and"]),
        (["fedmllm-admin", "status"], ["--run ID", "--json", "--follow", "--coordinator"]),
        (["fedmllm-admin"], ["start-run", "list-silos", "runs", "export", "$FEDMLLM_CERT"]),
        (["fedmllm-coordinator"], ["(default: 50051)", "--log-format {text,json}"]),
        (["silo-agent"], ["silo-agent check --data DIR", "silo-agent init-adapter", "--profile"]),
        (["silo-agent"], ["--log-level {debug,info,warning,error}", "(default: auto)"]),
        (["silo-agent", "check"], ["--batch-size", "(default: 4)", "Exit 0: ok"]),
        (["fedmllm-certs", "init"], ["(default: localhost,127.0.0.1)"]),
    ],
)
def test_help_shows_commands_defaults_and_choices(argv: list[str], shown: list[str]) -> None:
    ran = run(argv[0], *argv[1:], "--help")
    text = " ".join(ran.out.split())
    assert ran.code == 0 and ran.err == ""
    for needle in shown:
        assert " ".join(needle.split()) in text, needle
