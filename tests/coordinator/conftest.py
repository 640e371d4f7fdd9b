"""Coordinators the coordinator tests share."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.aggregation import native
from coordinator.server import RunningCoordinator, serve
from coordinator.silo_service import SiloServiceSettings
from tests.conftest import coordinator_config


@pytest.fixture
def quick(certs: Path, tiny_model: Path, tmp_path: Path) -> Iterator[RunningCoordinator]:
    """A coordinator that gives up on stalled uploads and handshakes after one second."""
    config = replace(
        coordinator_config(certs, tiny_model, tmp_path / "checkpoints"),
        handshake_timeout_s=1.0,
        silo_service=SiloServiceSettings(heartbeat_interval_s=1, upload_stall_s=1.0),
    )
    with serve(config) as running:
        yield running


@pytest.fixture
def no_native_loops() -> Iterator[None]:
    """This process as one without the native fold loops runs (no compiler: ATen's ops serve)."""
    with native.unavailable():
        yield
