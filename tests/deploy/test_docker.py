"""The Docker route of docs/deploy.md, checked without an engine (none runs on the test machines):
the build context, the images' user, extras and health checks, and the compose file's commands,
ports and logins, against this project's commands and files."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.server import RunningCoordinator
from shared.tls import TlsFiles
from tests.deploy.cli_options import command_problems
from tests.deploy.docker_files import DOCKER, Dockerfile, expand_defaults, in_build_context
from tests.deploy.packaging import ROOT

IMAGES = {"coordinator": "coordinator.Dockerfile", "silo": "silo.Dockerfile"}
HEALTHCHECK = DOCKER / "healthcheck.py"
SERVICE_UID = "10001"


def _compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load((DOCKER / "compose.yaml").read_text())[
        "services"
    ]
    return services


def _image_of(service: dict[str, object]) -> Dockerfile:
    build = service["build"]
    assert isinstance(build, dict)
    return Dockerfile.read(ROOT / build["dockerfile"])


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("image", sorted(IMAGES.values()))
def test_image_copies_only_what_the_build_context_holds(image: str) -> None:
    for sources, stage in Dockerfile.read(DOCKER / image).copies:
        for source in sources if not stage else []:
            assert (ROOT / source).exists(), f"{image}: COPY {source} is missing"
            assert in_build_context(source), f"{image}: .dockerignore leaves out {source}"


def test_build_context_leaves_out_local_state_and_keys() -> None:
    for path in (".venv/bin/python", ".git/HEAD", ".demo/certs/ca.key", ".study/cells.jsonl"):
        assert not in_build_context(path), path
    for path in ("shared/__pycache__/tls.cpython-311.pyc", "deploy/docker/pki/silo-1.key"):
        assert not in_build_context(path), path
    assert in_build_context("shared/tls.py") and in_build_context("pyproject.toml")


@pytest.mark.parametrize(("role", "image"), sorted(IMAGES.items()))
def test_image_installs_its_role_on_cpu_torch_as_a_plain_user(role: str, image: str) -> None:
    parsed = Dockerfile.read(DOCKER / image)
    installs = [r for r in parsed.runs if "pip install" in r]
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in installs[0]
    assert re.search(r"fedmllm-\*\.whl\)\[" + role + r"\]", installs[1]), installs[1]
    assert parsed.user == "fedmllm"
    assert any(f"--uid {SERVICE_UID}" in r and f"--gid {SERVICE_UID}" in r for r in parsed.runs)


def test_the_coordinator_image_can_build_its_kernels() -> None:
    """torch.compile's fused steps and the native fold loops need a compiler in the image."""
    parsed = Dockerfile.read(DOCKER / IMAGES["coordinator"])
    assert any(re.search(r"apt-get install .*\bg\+\+", r) for r in parsed.runs), parsed.runs


def test_operators_are_told_how_the_image_user_reads_mounted_keys() -> None:
    instruction = f"chgrp {SERVICE_UID}"
    assert instruction in (DOCKER / "compose.yaml").read_text()
    assert instruction in (ROOT / "docs" / "deploy.md").read_text()


@pytest.mark.parametrize("name", ["coordinator", "silo-1", "silo-2", "silo-3"])
def test_compose_service_runs_a_valid_command_with_its_own_files(name: str) -> None:
    service = _compose()[name]
    command, *entry = _image_of(service).entrypoint
    argv = [*entry, *service["command"]]  # type: ignore[misc]
    assert command_problems(command, argv) == []
    files = TlsFiles.in_directory(Path("/pki"), name)
    given = [_flag(argv, f) for f in ("--cert", "--key", "--ca")]
    assert given == [str(files.cert), str(files.key), str(files.ca)]
    assert any(str(v).endswith(":/pki:ro") for v in service["volumes"])  # type: ignore[attr-defined]


def test_compose_publishes_on_loopback_and_asks_for_the_grafana_password() -> None:
    services = _compose()
    for name, service in services.items():
        for port in service.get("ports", []):  # type: ignore[attr-defined]
            assert expand_defaults(port).startswith("127.0.0.1:"), f"{name}: {port}"
    grafana = services["grafana"]["environment"]
    assert isinstance(grafana, dict)
    assert re.fullmatch(
        r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", grafana["GF_SECURITY_ADMIN_PASSWORD"]
    )
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


@pytest.mark.parametrize("name", ["coordinator", "silo-1"])
def test_health_check_probes_the_ports_the_service_serves(name: str) -> None:
    service = _compose()[name]
    image = _image_of(service)
    assert (["deploy/docker/healthcheck.py"], "") in image.copies
    program, script, *probe = image.healthcheck
    assert (program, script) == ("python", "/usr/local/bin/fedmllm-healthcheck")
    argv = [*image.entrypoint[1:], *service["command"]]  # type: ignore[misc]
    assert _flag(probe, "--metrics") == f"127.0.0.1:{_flag(argv, '--metrics-port')}"
    if name == "coordinator":
        assert _flag(probe, "--tcp") == f"127.0.0.1:{_flag(argv, '--port')}"


def _health(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--timeout", "2", *argv], capture_output=True, text=True
    )


def test_health_check_tells_a_serving_coordinator_from_a_silent_port(
    coordinator: RunningCoordinator,
) -> None:
    healthy = _health(
        "--tcp",
        f"127.0.0.1:{coordinator.port}",
        "--metrics",
        f"127.0.0.1:{coordinator.metrics_port}",
    )
    assert healthy.returncode == 0, healthy.stderr
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        silent = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        unhealthy = _health("--tcp", silent, "--metrics", silent)
    assert unhealthy.returncode == 1
    assert unhealthy.stderr.count("unhealthy:") == 2, unhealthy.stderr
