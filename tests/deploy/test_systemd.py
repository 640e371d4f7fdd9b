"""The systemd route of docs/deploy.md: units that parse, run this project's commands with the
files `fedmllm-certs` hands out, stop restarting on permanent refusals and rate 3.0 or better
in `systemd-analyze security`; sysusers/tmpfiles that give the service user its keys."""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.pki import create_federation
from shared.tls import TlsFiles
from tests.deploy.cli_options import command_problems
from tests.deploy.packaging import ROOT
from tests.deploy.systemd_units import (
    SYSTEMD,
    UNITS,
    allowed_system_calls,
    exec_start,
    unit_settings,
)

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
PKI = Path("/etc/fedmllm/pki")
SECCOMP_EXEC = Path(__file__).with_name("seccomp_exec.py")


def _exposure(unit: Path) -> float:
    shown = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", "--threshold=30", str(unit)],
        capture_output=True,
        text=True,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", shown.stdout)
    assert level is not None, shown.stdout + shown.stderr
    assert shown.returncode == 0, f"{unit.name} exposure {level.group(1)} is above 3.0"
    return float(level.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_is_hardened(unit: str) -> None:
    assert _exposure(SYSTEMD / unit) <= 3.0


@needs_analyze
def test_gpu_drop_in_keeps_the_silo_hardened(tmp_path: Path) -> None:
    unit = (SYSTEMD / "fedmllm-silo.service").read_text()
    body, _, install = unit.partition("[Install]")
    merged = tmp_path / "fedmllm-silo.service"
    merged.write_text(f"{body}{(SYSTEMD / 'silo-gpu.conf').read_text()}\n[Install]{install}")
    assert _exposure(merged) <= 3.0


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this venv's command
    text = (
        (SYSTEMD / unit)
        .read_text()
        .replace("/opt/fedmllm/.venv/bin", str(Path(sys.executable).parent))
    )
    (tmp_path / unit).write_text(text)
    checked = subprocess.run(
        [str(ANALYZE), "verify", str(tmp_path / unit)], capture_output=True, text=True
    )
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_runs_a_valid_command(unit: str) -> None:
    program, *argv = exec_start(unit)
    assert program.startswith("/opt/fedmllm/.venv/bin/")
    assert command_problems(Path(program).name, argv) == []


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_uses_the_files_fedmllm_certs_hands_out(unit: str) -> None:
    argv = exec_start(unit)
    given = {flag: argv[argv.index(flag) + 1] for flag in ("--cert", "--key", "--ca")}
    name = Path(given["--cert"]).stem
    assert name == ("coordinator" if "coordinator" in unit else "hospital-a")
    files = TlsFiles.in_directory(PKI, name)
    assert given == {"--cert": str(files.cert), "--key": str(files.key), "--ca": str(files.ca)}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_stops_on_permanent_refusals_and_writes_where_allowed(unit: str) -> None:
    settings = unit_settings((SYSTEMD / unit).read_text())
    assert settings["Service.Restart"] == ["on-failure"]
    assert settings["Service.RestartPreventExitStatus"] == ["2 3 4"]
    assert settings["Service.User"] == ["fedmllm"]
    assert settings["Service.ProtectSystem"] == ["strict"]
    writable = [f"/var/cache/{d}" for d in settings.get("Service.CacheDirectory", [])]
    writable += [f"/var/lib/{d}" for d in settings.get("Service.StateDirectory", [])]
    argv = exec_start(unit)
    for flag in ("--checkpoint-dir", "--judge-cache"):
        if flag in argv:
            target = argv[argv.index(flag) + 1]
            assert any(target.startswith(f"{d}/") for d in writable), f"{flag} {target}"
    if "coordinator" in unit:
        assert settings["Service.LimitNOFILE"] == ["65536"]


@pytest.fixture
def system_root() -> Iterator[Path]:
    """A directory tree standing in for /, traversable by the service user it will hold."""
    root = Path(tempfile.mkdtemp(prefix="fedmllm-root-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("systemd-tmpfiles"),
    reason="needs root and systemd-tmpfiles to create the user and chown its files",
)
def test_sysusers_and_tmpfiles_let_only_the_service_read_its_key(system_root: Path) -> None:
    for kind in ("sysusers.d", "tmpfiles.d"):
        (system_root / "etc" / kind).mkdir(parents=True)
        shutil.copy(SYSTEMD / kind / "fedmllm.conf", system_root / "etc" / kind)
    subprocess.run(["systemd-sysusers", f"--root={system_root}"], check=True, capture_output=True)
    pki = system_root / PKI.relative_to("/")
    create_federation(pki, hosts=["coordinator.example.org"], silos=["hospital-a"], admins=[])
    for env in UNITS.values():
        shutil.copy(SYSTEMD / env, system_root / "etc" / "fedmllm")
    subprocess.run(
        ["systemd-tmpfiles", f"--root={system_root}", "--create"], check=True, capture_output=True
    )
    user = re.search(r"^fedmllm:x:(\d+):(\d+):", (system_root / "etc" / "passwd").read_text(), re.M)
    assert user is not None, "systemd-sysusers created no fedmllm user"
    uid, gid = user.groups()
    key = pki / "hospital-a.key"
    assert (key.stat().st_mode & 0o777, key.stat().st_gid) == (0o640, int(gid))
    assert (system_root / "etc" / "fedmllm" / "silo.env").stat().st_mode & 0o777 == 0o600
    assert (system_root / "srv" / "fedmllm" / "data").stat().st_gid == int(gid)

    service, other = (int(uid), int(gid)), (int(uid) + 1, int(gid) + 1)
    assert _reads(service, key) and _reads(service, pki / "ca.pem")
    assert not _reads(other, key)
    assert not _reads(service, system_root / "etc" / "fedmllm" / "silo.env")


def _reads(identity: tuple[int, int], path: Path) -> bool:
    """Whether a process of this uid and gid (no other groups) can read `path`."""
    uid, gid = identity
    done = subprocess.run(
        ["cat", str(path)], user=uid, group=gid, extra_groups=[], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.slow  # a whole demo federation under seccomp: ~25 s
@needs_analyze
@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None, reason="libseccomp is missing")
def test_a_federation_runs_under_the_units_system_call_filter(tmp_path: Path) -> None:
    calls = allowed_system_calls("fedmllm-coordinator.service", str(ANALYZE))
    assert calls == allowed_system_calls("fedmllm-silo.service", str(ANALYZE))
    allowed = tmp_path / "calls"
    allowed.write_text("\n".join(sorted(calls)))
    under_filter = [sys.executable, str(SECCOMP_EXEC), str(allowed), sys.executable]
    # the filter bites: changing a file's owner is not a service's business
    owned = tmp_path / "owned"
    owned.touch()
    chown = subprocess.run([*under_filter, "-c", f"import os; os.chown({str(owned)!r}, 0, 0)"])
    assert chown.returncode == -signal.SIGSYS
    # the demo federation: coordinator, a silo agent and the admin, every process filtered
    demo = [*under_filter, "-m", "bench.demo", "--workdir", str(tmp_path / "demo")]
    demo += ["--silos", "1", "--rounds", "1", "--train-samples", "8"]
    done = subprocess.run(demo, cwd=ROOT, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text()[-1500:] for p in (tmp_path / "demo" / "logs").glob("*.log"))
    assert done.returncode == 0 and "1/1 rounds" in done.stdout, done.stdout + done.stderr + logs
