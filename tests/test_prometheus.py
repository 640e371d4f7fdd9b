"""A real Prometheus server scrapes a real 2-round federation: every PromQL expression of the
Grafana dashboard returns data, and what Prometheus counts is what happened: refusals counted
through increase() (their series exist at 0 before the first), rounds, accepted updates, bytes,
evaluation results and each silo's tasks under its own `silo` label. `.ci/run` installs
Debian's prometheus when it is missing."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from silo_agent.metrics import SiloMetrics
from silo_agent.model import load_silo_model
from tests.conftest import EVALUATOR, SILOS, coordinator_config, tls
from tests.helpers import (
    agents_running,
    channel,
    run_to_end,
    small_run,
    update_stream,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/fedmllm.json"
PROMETHEUS = shutil.which("prometheus")
REFUSALS = 3  # stale updates the test sends


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _query(port: int, expr: str) -> list[Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.loads(reply.read())
    except OSError:  # Prometheus still starting
        return []
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


def _values(port: int, expr: str, label: str = "") -> dict[str, float]:
    """The expression's values by `label` ('' for a single unlabelled result)."""
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in _query(port, expr)}


def _eventually(check: Callable[[], list[str]], seconds: float = 60.0) -> None:
    """Let Prometheus scrape (every second) until `check` finds nothing wrong."""
    deadline = time.monotonic() + seconds
    wrong = check()
    while wrong and time.monotonic() < deadline:
        time.sleep(1.0)
        wrong = check()
    assert not wrong, wrong


@contextmanager
def _prometheus(targets: list[str], tmp_path: Path) -> Iterator[int]:
    config = tmp_path / "prometheus.yml"
    scrape = {"job_name": "fedmllm", "static_configs": [{"targets": targets}]}
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))
    port = _free_port()
    server = subprocess.Popen(
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
        yield port
    finally:
        server.terminate()
        server.wait(10)


def _expected(status: pb.RunStatus) -> dict[str, dict[str, float]]:
    """What Prometheus must report after this run, expression -> {label value: number}."""
    history = status.history
    return {
        'sum(increase(fedmllm_updates_rejected_total{reason="late"}[10m]))': {"": REFUSALS},
        'sum(increase(fedmllm_updates_rejected_total{reason!="late"}[10m]))': {"": 0},
        "sum(increase(fedmllm_rounds_completed_total[10m]))": {"": len(history)},
        "sum(fedmllm_updates_accepted_total)": {"": sum(len(r.contributed) for r in history)},
        "sum(fedmllm_received_bytes_total)": {"": sum(r.bytes_received for r in history)},
        'sum by (silo) (fedmllm_silo_rounds_total{kind="train"})': {
            s: sum(s in r.contributed for r in history) for s in SILOS
        },
        'sum by (silo) (fedmllm_silo_rounds_total{kind="evaluate"})': {
            s: sum(s in r.evaluated_by for r in history) for s in SILOS
        },
    }


def _differences(port: int, expected: dict[str, dict[str, float]]) -> list[str]:
    wrong = []
    for expr, values in expected.items():
        label = "silo" if "by (silo)" in expr else ""
        got = _values(port, expr, label)
        # increase() extrapolates to the window's end: a few percent, never a whole count
        if got.keys() != values.keys() or any(abs(got[k] - v) > 0.5 for k, v in values.items()):
            wrong.append(f"{expr}: {got} != {values}")
    return wrong


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed")
def test_prometheus_counts_what_the_federation_did(
    certs: Path, tiny_model: Path, silo_data: dict[str, Path], tmp_path: Path
) -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    expressions = [t["expr"] for p in panels for t in p["targets"]]
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
                metrics=SiloMetrics(silo=name),
            )
            server, _ = start_http_server(0, addr="127.0.0.1", registry=agent.metrics.registry)
            targets.append(f"127.0.0.1:{server.server_port}")
            agents.append(agent)
        with (
            _prometheus(targets, tmp_path) as port,
            agents_running(agents, running.federation.registry),
        ):
            refused = 'fedmllm_updates_rejected_total{reason="late"}'
            _eventually(lambda: [] if _values(port, refused) == {"": 0} else [f"{refused} != 0"])
            # a silo that never joined sends stale updates: late, counted, never selected
            with channel(running.port, tls(certs, EVALUATOR)) as stray:
                for attempt in range(REFUSALS):
                    with pytest.raises(grpc.RpcError):
                        pb_grpc.SiloStub(stray).UploadUpdate(
                            update_stream(f"run-x/r9/a{attempt}/gone", b"\0" * 16)
                        )
            admin = pb_grpc.AdminStub(channel(running.port, tls(certs, "admin")))
            status = run_to_end(admin, small_run(eval_every=2))
            assert status.state == pb.RUN_STATE_COMPLETED
            _eventually(lambda: _differences(port, _expected(status)))
            _eventually(lambda: [e for e in expressions if not _query(port, e)])
            evaluation = _values(port, "fedmllm_eval_metric", "metric")
            assert evaluation == pytest.approx(dict(status.history[-1].evaluation))
