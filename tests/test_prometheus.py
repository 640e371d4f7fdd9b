"""A real Prometheus server scrapes a real 2-round federation; every PromQL expression of the
Grafana dashboard must return data. `.ci/run` installs Debian's prometheus when it is missing."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import start_http_server

from coordinator.server import serve
from shared.silo_data import read_split
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.client import Backoff, SiloAgent
from silo_agent.model import load_silo_model
from tests.conftest import EVALUATOR, SILOS, coordinator_config, tls
from tests.helpers import (
    ProtocolSilo,
    agents_running,
    channel,
    run_to_end,
    small_run,
    update_stream,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/fedmllm.json"
PROMETHEUS = shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _query(port: int, expr: str) -> list[Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed")
def test_every_dashboard_expression_returns_data(
    certs: Path, tiny_model: Path, silo_data: dict[str, Path], tmp_path: Path
) -> None:
    expressions = [
        t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]
    ]
    with serve(coordinator_config(certs, tiny_model, tmp_path / "ckpt")) as running:
        agents, targets = [], [f"127.0.0.1:{running.metrics_port}"]
        for name in SILOS:
            agent = SiloAgent(
                coordinator=f"localhost:{running.port}",
                tls=tls(certs, name),
                silo=load_silo_model(tiny_model, device="cpu"),
                samples=read_split(silo_data[name]),
                test_samples=read_split(silo_data[name], "test"),
                backoff=Backoff(0.2, 1.0),
            )
            server, _ = start_http_server(0, addr="127.0.0.1", registry=agent.metrics.registry)
            targets.append(f"127.0.0.1:{server.server_port}")
            agents.append(agent)
        config = tmp_path / "prometheus.yml"
        scrape = {"job_name": "fedmllm", "static_configs": [{"targets": targets}]}
        config.write_text(
            json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]})
        )
        port = _free_port()
        prometheus = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with agents_running(agents, running.federation.registry):
                stray = ProtocolSilo(running.port, tls(certs, EVALUATOR), tiny_model)
                with pytest.raises(grpc.RpcError):  # a stale update, refused and counted
                    stray.stub.UploadUpdate(update_stream("run-x/r9/a0/gone", b"\0" * 16))
                stray.close()
                admin = pb_grpc.AdminStub(channel(running.port, tls(certs, "admin")))
                spec = small_run(eval_every=2)
                assert run_to_end(admin, spec).state == pb.RUN_STATE_COMPLETED
                deadline = time.monotonic() + 60
                missing = expressions
                while missing and time.monotonic() < deadline:
                    time.sleep(1.0)  # a few more scrapes, for rate() windows
                    missing = [e for e in expressions if not _query_or_empty(port, e)]
                assert not missing, f"no data for: {missing}"
        finally:
            prometheus.terminate()
            prometheus.wait(10)


def _query_or_empty(port: int, expr: str) -> list[Any]:
    try:
        return _query(port, expr)
    except OSError:  # Prometheus still starting
        return []
