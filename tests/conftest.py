"""Fixtures: certificates, tiny models and tiny silo data sets, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.data.synthetic_data import tokenizer_corpus, write_silo
from bench.demo.tiny_model import build_tiny_model
from coordinator.federation import ControllerSettings
from coordinator.server import CoordinatorConfig, RunningCoordinator, serve
from coordinator.silo_service import SiloServiceSettings
from shared.pki import create_federation
from shared.tls import TlsFiles

SILOS = ["silo-1", "silo-2"]
EVALUATOR = "eval-site"  # an evaluation-only silo


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    create_federation(
        directory, hosts=["localhost", "127.0.0.1"], silos=[*SILOS, EVALUATOR], admins=["admin"]
    )
    return directory


@pytest.fixture(scope="session")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second federation: same names, a different CA."""
    directory = tmp_path_factory.mktemp("foreign-certs")
    create_federation(directory, hosts=["localhost"], silos=SILOS, admins=["admin"])
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("idefics3"), family="idefics3", corpus=tokenizer_corpus(), seed=0
    )


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("llava"), family="llava", corpus=tokenizer_corpus(), seed=0
    )


@pytest.fixture(scope="session")
def silo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("silo-data")
    return {
        name: write_silo(root / name, train=12, test=4, seed=i)
        for i, name in enumerate(SILOS, start=1)
    }


def tls(certs: Path, name: str) -> TlsFiles:
    return TlsFiles.in_directory(certs, name)


def coordinator_config(certs: Path, model: Path, checkpoints: Path) -> CoordinatorConfig:
    return CoordinatorConfig(
        model_dir=model,
        checkpoint_dir=checkpoints,
        tls=tls(certs, "coordinator"),
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        silo_service=SiloServiceSettings(heartbeat_interval_s=1),
        controller=ControllerSettings(selection_grace_s=0.5, poll_s=0.05),
    )


@pytest.fixture
def coordinator(certs: Path, tiny_model: Path, tmp_path: Path) -> Iterator[RunningCoordinator]:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "checkpoints")) as running:
        yield running
