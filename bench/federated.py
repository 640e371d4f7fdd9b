"""The FL cells of the grid: a coordinator, one silo-agent process per client and an
evaluation-only silo holding the test split, all on loopback over mutual TLS. One set of
processes serves every FL method of a partition in turn (each method is a new run), so the
grid pays the processes' start-up once per partition, not once per cell."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from bench.demo.federation import (
    admin_command,
    processes,
    start_coordinator,
    threads_per_agent,
    wait_for_silos,
)
from bench.forked_agents import forked_agents, start_agent
from coordinator.run_state import RunSpec
from shared.adapter import initial_adapter, load_model_config, write_adapter_directory
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


class FederationProcesses:
    """Processes for one partition; `run(spec)` runs one FL method to its end."""

    def __init__(
        self,
        *,
        workdir: Path,
        model: Path,
        certs: Path,
        client_dirs: list[Path],
        test_dir: Path,
        trust_remote_code: bool = False,
    ) -> None:
        self.workdir, self.certs, self.client_dirs = workdir, certs, client_dirs
        self.trust_remote_code = trust_remote_code
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        _link(workdir / "model", model)
        _link(workdir / "certs", certs)
        for directory in client_dirs:
            _link(workdir / "data" / directory.name, directory)
        _link(workdir / "data" / EVALUATOR, test_dir)
        self._stack = contextlib.ExitStack()
        self._admin: pb_grpc.AdminStub | None = None

    def __enter__(self) -> FederationProcesses:
        running = self._stack.enter_context(processes())
        coordinator, port, _ = start_coordinator(self.workdir, self.logs, *self._coordinator_args())
        running.append(coordinator)
        agents = self._stack.enter_context(forked_agents())  # stopped before the coordinator
        remote = ["--trust-remote-code"] if self.trust_remote_code else []
        agents.extend(
            start_agent(self._agent_args(d.name, port, *remote), self.logs / f"{d.name}.log")
            for d in self.client_dirs
        )
        agents.append(
            start_agent(
                self._agent_args(EVALUATOR, port, "--eval-only", *remote),
                self.logs / f"{EVALUATOR}.log",
            )
        )
        admin_cli = admin_command(self.certs, port)
        wait_for_silos(admin_cli, len(self.client_dirs) + 1)
        channel = self._stack.enter_context(
            grpc.secure_channel(
                f"127.0.0.1:{port}",
                channel_credentials(TlsFiles.in_directory(self.certs, "admin")),
                options=CHANNEL_OPTIONS,
            )
        )
        self._admin = pb_grpc.AdminStub(channel)
        return self

    def _agent_args(self, name: str, port: int, *extra: str) -> list[str]:
        """`silo-agent` arguments for silo `name`, as `bench.demo.federation` gives them."""
        certs = self.workdir / "certs"
        threads = threads_per_agent(len(self.client_dirs))  # the evaluator idles while they train
        return [
            *("--data", str(self.workdir / "data" / name)),
            *("--coordinator", f"127.0.0.1:{port}"),
            *("--model", str(self.workdir / "model"), "--device", "cpu"),
            *("--cert", str(certs / f"{name}.pem"), "--key", str(certs / f"{name}.key")),
            *("--ca", str(certs / "ca.pem"), "--threads", str(threads)),
            *extra,
        ]

    def _coordinator_args(self) -> list[str]:
        """A model with its own code: the coordinator starts from an adapter made here."""
        if not self.trust_remote_code:
            return []
        adapter = self.workdir / "initial-adapter"
        if not (adapter / "adapter_model.safetensors").exists():
            config = load_model_config(self.workdir / "model", trust_remote_code=True)
            lora, state = initial_adapter(config, seed=0, trust_remote_code=True)
            write_adapter_directory(adapter, lora, state)
        return ["--adapter", str(adapter)]

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stack.close()

    def run(self, spec: RunSpec, *, timeout_s: float = 3600) -> dict[str, Any]:
        """The final evaluation and a record per round."""
        assert self._admin is not None, "use FederationProcesses as a context manager"
        self._admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        deadline = time.monotonic() + timeout_s
        status = self._admin.GetStatus(pb.StatusRequest())
        while status.state == pb.RUN_STATE_RUNNING and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self._admin.GetStatus(pb.StatusRequest())
        if status.state != pb.RUN_STATE_COMPLETED:
            raise RuntimeError(
                f"run did not complete ({pb.RunState.Name(status.state)}): "
                f"{status.message}; logs in {self.logs}"
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
