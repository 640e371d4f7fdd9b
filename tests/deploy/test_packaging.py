"""The release files: one sdist and one wheel with an extra per role and every command, and a
coordinator that serves with nothing installed but the base and `coordinator` dependencies."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest

from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import tls
from tests.deploy.packaging import WheelMetadata, build_release, installed_closure, tracked_files
from tests.helpers import channel

PACKAGES = ("shared", "coordinator", "silo_agent", "bench")
COMMANDS = {
    "fedmllm-certs",
    "fedmllm-coordinator",
    "fedmllm-admin",
    "silo-agent",
    "fedmllm-demo",
    "fedmllm-partition",
    "fedmllm-bench",
    "fedmllm-predict",
}
# What a coordinator host must not receive: model-side, judge, plotting and code generation.
NOT_ON_A_COORDINATOR = {"bitsandbytes", "openai", "matplotlib", "grpcio-tools", "pillow"}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def wheel_metadata(release: tuple[Path, Path]) -> WheelMetadata:
    return WheelMetadata.read(release[1])


def test_each_role_has_its_extra(wheel_metadata: WheelMetadata) -> None:
    assert wheel_metadata.extras == {"silo", "coordinator", "judge", "bench", "dev"}
    assert not wheel_metadata.names("coordinator") & NOT_ON_A_COORDINATOR
    assert str(wheel_metadata.requirements[""]["torch"].specifier) == "==2.13.0"
    assert {"bitsandbytes", "pillow", "scikit-learn"} <= set(wheel_metadata.requirements["silo"])
    assert set(wheel_metadata.requirements["judge"]) == {"openai"}
    assert set(wheel_metadata.requirements["bench"]) == {"matplotlib"}
    assert {"grpcio-tools", "pytest", "ruff", "mypy"} <= set(wheel_metadata.requirements["dev"])


def test_every_command_is_an_entry_point(wheel_metadata: WheelMetadata) -> None:
    assert set(wheel_metadata.console_scripts) == COMMANDS
    for command, target in wheel_metadata.console_scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), command


def test_the_release_files_hold_every_module(release: tuple[Path, Path]) -> None:
    sdist, wheel = release
    modules = {n for n in tracked_files() if n.endswith((".py", ".c")) and n.startswith(PACKAGES)}
    assert "coordinator/aggregation/native.c" in modules
    with zipfile.ZipFile(wheel) as archive:
        assert modules <= set(archive.namelist())
    with tarfile.open(sdist) as archive:
        top = f"{sdist.name.removesuffix('.tar.gz')}/"
        in_sdist = {m.name.removeprefix(top) for m in archive.getmembers()}
    assert modules | {"pyproject.toml", "README.md"} <= in_sdist


def _venv_with(root: Path, wheel: Path, distributions: set[str]) -> Path:
    """A fresh venv holding the unpacked wheel and exactly `distributions`, linked from this one."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    (site,) = root.glob("lib/python*/site-packages")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    for name in distributions:
        for top in {f.parts[0] for f in metadata.distribution(name).files or []}:
            here = Path(metadata.distribution(name).locate_file(top))
            if top not in ("..", "__pycache__") and not (site / top).exists() and here.exists():
                (site / top).symlink_to(here)
    return root / "bin" / "python"


@contextmanager
def _process(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


def test_coordinator_serves_with_only_its_dependencies(
    wheel_metadata: WheelMetadata,
    release: tuple[Path, Path],
    certs: Path,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    closure = installed_closure(wheel_metadata.names("coordinator"))
    assert not closure & NOT_ON_A_COORDINATOR
    python = _venv_with(tmp_path / "venv", release[1], closure)
    probe = "import importlib.util as u; print(*[m for m in ('bitsandbytes', 'openai', "
    probe += "'matplotlib', 'grpc_tools', 'PIL', 'sklearn') if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == ""
    port_file, log = tmp_path / "ports", tmp_path / "coordinator.log"
    files = tls(certs, "coordinator")
    command = [str(python), "-m", "coordinator", "--model", str(tiny_model)]
    command += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--cert", str(files.cert)]
    command += ["--key", str(files.key), "--ca", str(files.ca), "--host", "127.0.0.1"]
    command += ["--port", "0", "--metrics-port", "-1", "--port-file", str(port_file)]
    with _process(command, log) as process:
        deadline = time.monotonic() + 120
        while not port_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert port_file.exists(), log.read_text()
        port = int(port_file.read_text().split()[0])
        admin = pb_grpc.AdminStub(channel(port, tls(certs, "admin")))
        assert admin.GetStatus(pb.StatusRequest(), timeout=30).state == pb.RUN_STATE_IDLE
    assert process.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text() and "kernels" not in log.read_text()


def test_silo_checks_its_data_with_only_its_dependencies(
    wheel_metadata: WheelMetadata,
    release: tuple[Path, Path],
    tiny_model: Path,
    silo_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    closure = installed_closure(wheel_metadata.names("silo"))
    assert not closure & {"matplotlib", "grpcio-tools"}
    python = _venv_with(tmp_path / "venv", release[1], closure)
    command = [str(python), "-m", "silo_agent", "check", "--data", str(silo_data["silo-1"])]
    checked = subprocess.run(
        [*command, "--model", str(tiny_model)], capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
