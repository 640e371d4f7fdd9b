"""One FL cell of the grid: a coordinator, one silo-agent process per client and an
evaluation-only silo holding the test split, all on loopback over mutual TLS."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import grpc

from coordinator.run_state import RunSpec
from shared.demo.federation import (
    processes,
    start_coordinator,
    start_silo,
    wait_for_silos,
)
from shared.grpc_options import CHANNEL_OPTIONS
from shared.tls import TlsFiles, channel_credentials
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

EVALUATOR = "evaluator"


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve(), target_is_directory=True)


def run_federated(
    *,
    workdir: Path,
    model: Path,
    certs: Path,
    client_dirs: list[Path],
    test_dir: Path,
    spec: RunSpec,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Run `spec` to its end; the final evaluation and a record per round."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _link(workdir / "model", model)
    _link(workdir / "certs", certs)
    for directory in client_dirs:
        _link(workdir / "data" / directory.name, directory)
    _link(workdir / "data" / EVALUATOR, test_dir)
    admin_cli = [
        "--cert",
        str(certs / "admin.pem"),
        "--key",
        str(certs / "admin.key"),
        "--ca",
        str(certs / "ca.pem"),
    ]
    with processes() as running:
        coordinator, port, _ = start_coordinator(workdir, logs)
        running.append(coordinator)
        running.extend(start_silo(workdir, logs, d.name, port) for d in client_dirs)
        running.append(start_silo(workdir, logs, EVALUATOR, port, "--eval-only"))
        wait_for_silos(
            [
                sys.executable,
                "-m",
                "coordinator.admin_cli",
                "--coordinator",
                f"127.0.0.1:{port}",
                *admin_cli,
            ],
            len(client_dirs) + 1,
        )
        credentials = channel_credentials(TlsFiles.in_directory(certs, "admin"))
        with grpc.secure_channel(
            f"127.0.0.1:{port}", credentials, options=CHANNEL_OPTIONS
        ) as channel:
            admin = pb_grpc.AdminStub(channel)
            admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
            deadline = time.monotonic() + timeout_s
            status = admin.GetStatus(pb.StatusRequest())
            while status.state == pb.RUN_STATE_RUNNING and time.monotonic() < deadline:
                time.sleep(0.5)
                status = admin.GetStatus(pb.StatusRequest())
    if status.state != pb.RUN_STATE_COMPLETED:
        raise RuntimeError(
            f"run did not complete ({pb.RunState.Name(status.state)}): "
            f"{status.message}; logs in {logs}"
        )
    rounds = [
        {
            "round": r.round,
            "train_loss": r.mean_train_loss,
            "bytes_sent": r.bytes_sent,
            "bytes_received": r.bytes_received,
            "update_norm": r.update_norm,
            "seconds": r.seconds,
            "evaluation": dict(r.evaluation),
        }
        for r in status.history
    ]
    return {"metrics": dict(status.history[-1].evaluation), "rounds": rounds}
