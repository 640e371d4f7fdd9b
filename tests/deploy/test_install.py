"""docs/deploy.md's two install routes, each into a clean venv with pip (about a minute each, so
marked slow: `.venv/bin/python -m pytest -m slow tests/deploy/test_install.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.data.synthetic_data import write_silo
from tests.deploy.packaging import ROOT, build_release
from tests.deploy.test_packaging import NOT_ON_A_COORDINATOR

pytestmark = pytest.mark.slow


def _clean_venv(root: Path) -> Path:
    """A venv with the CPU build of torch, installed first as docs/deploy.md says."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = root / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", "torch==2.13.0"], check=True)
    return pip


def _installed(pip: Path) -> set[str]:
    listing = subprocess.run([str(pip), "list"], capture_output=True, text=True, check=True)
    return {line.split()[0].lower() for line in listing.stdout.splitlines()[2:]}


def test_coordinator_from_the_wheel(tmp_path: Path) -> None:
    _, wheel = build_release(tmp_path / "release")
    pip = _clean_venv(tmp_path / "venv")
    subprocess.run([str(pip), "install", "-q", f"{wheel}[coordinator]"], check=True)
    subprocess.run([str(pip), "check"], check=True)
    assert not _installed(pip) & NOT_ON_A_COORDINATOR
    bin_dir = pip.parent
    certs = subprocess.run(
        [str(bin_dir / "fedmllm-certs"), "--out", str(tmp_path / "pki"), "--silos", "a"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "pki" / "coordinator.key").is_file(), certs.stdout
    shown = subprocess.run(
        [str(bin_dir / "fedmllm-coordinator"), "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "--checkpoint-dir" in shown.stdout, shown.stderr


def test_silo_from_a_git_checkout(tmp_path: Path, tiny_model: Path) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    pip = _clean_venv(tmp_path / "venv")
    url = f"fedmllm[silo] @ git+file://localhost{ROOT}@{head}"  # a PEP 508 URL needs a host
    subprocess.run([str(pip), "install", "-q", url], check=True)
    subprocess.run([str(pip), "check"], check=True)
    assert {"bitsandbytes", "pillow", "scikit-learn"} <= _installed(pip)
    assert "matplotlib" not in _installed(pip)
    data = write_silo(tmp_path / "data", train=4, test=2, seed=0)
    checked = subprocess.run(
        [str(pip.parent / "silo-agent"), "check", "--data", str(data), "--model", str(tiny_model)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
