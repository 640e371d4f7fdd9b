"""Nothing exposed: /metrics on loopback unless asked, over TLS for the federation's
certificates only when asked; checkpoints, spools and identity state owner-only."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from coordinator.run_state import RunSpec
from coordinator.server import serve
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import coordinator_config, tls
from tests.helpers import ProtocolSilo, channel, metrics_over_tls_only, scrape


def test_metrics_listen_on_loopback_by_default(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "state")) as running:
        assert running.metrics_port is not None
        host = running.metrics_host
        assert host == "127.0.0.1"
        assert "fedmllm_round" in scrape(f"http://127.0.0.1:{running.metrics_port}/metrics")


def test_metrics_over_tls_answer_federation_certificates_only(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    config = replace(coordinator_config(certs, tiny_model, tmp_path / "state"), metrics_tls=True)
    with serve(config) as running:
        assert running.metrics_port is not None
        assert "fedmllm_round" in metrics_over_tls_only(running.metrics_port, tls(certs, "admin"))


def test_state_written_by_the_coordinator_is_owner_only(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with serve(coordinator_config(certs, tiny_model, state)) as running:
        ProtocolSilo(running.port, tls(certs, "silo-1"), tiny_model).close()
        admin = pb_grpc.AdminStub(channel(running.port, tls(certs, "admin")))
        admin.StartRun(pb.StartRunRequest(spec=RunSpec(rounds=1).to_proto()))
        admin.StopRun(pb.StopRequest())
    for path in state.rglob("*"):
        mode = os.stat(path).st_mode & 0o777
        if path.name == ".lock":
            continue
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path.relative_to(state)}: {oct(mode)}"
    assert os.stat(state).st_mode & 0o777 == 0o700
