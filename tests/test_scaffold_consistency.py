"""SCAFFOLD's server variate stays the mean of the silos' variates when a round attempt is
abandoned: real silo agents (threads of this process) and a real coordinator over mutual TLS,
one silo held up past the deadline so that the other's accepted update is never aggregated.
With int8 updates each silo's variate moves by what its codes decode to, as the server's does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from coordinator.checkpoint import CheckpointStore
from coordinator.server import serve
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.trainer import LocalResult, train_round
from tests.conftest import SILOS, coordinator_config, tls
from tests.helpers import agents_running, channel, local_agent, run_to_end, small_run


def _held_up_once(round_label: str, seconds: float) -> Callable[..., LocalResult]:
    """train_round, except that the first task of `round_label` starts `seconds` late."""
    held = threading.Event()

    def train(*args: Any, **kwargs: Any) -> LocalResult:
        if kwargs.get("label") == round_label and not held.is_set():
            held.set()
            time.sleep(seconds)
        return train_round(*args, **kwargs)

    return train


@pytest.mark.parametrize("wire", ["bfloat16", "int8"])
def test_an_abandoned_attempt_moves_no_control_variate(
    certs: Path, tiny_model: Path, silo_data: dict[str, Path], tmp_path: Path, wire: str
) -> None:
    state = tmp_path / "state"
    with serve(coordinator_config(certs, tiny_model, state)) as running:
        agents = [
            local_agent(running.port, tls(certs, n), tiny_model, train=silo_data[n]) for n in SILOS
        ]
        agents[1]._train_round = _held_up_once("round 2", seconds=5.0)
        with agents_running(agents, running.federation.registry):
            admin = pb_grpc.AdminStub(channel(running.port, tls(certs, "admin")))
            spec = small_run(rounds=3, strategy="scaffold", round_deadline_s=3, wire_dtype=wire)
            status = run_to_end(admin, spec, timeout=240)
        assert status.state == 3, status.message  # completed
        assert len(status.history[1].reselections) == 1  # round 2's first attempt fell short
    checkpoint = CheckpointStore(state).load_latest()
    assert checkpoint is not None
    run_dir = next((state / "runs").iterdir())
    record = json.loads((sorted(run_dir.glob("round-*"))[-1] / "run.json").read_text())
    server = load_file(str(sorted(run_dir.glob("round-*"))[-1] / "strategy.safetensors"))["control"]
    variates = []
    for name, agent in zip(SILOS, agents, strict=True):
        controls = agent._controls
        controls.confirm(record["history"][-1]["tasks"].get(name, ""))  # as a next task would
        flat = torch.cat([controls.local[k].flatten() for k in sorted(controls.local)])
        variates.append(flat)
    mean = torch.stack(variates).mean(dim=0)
    assert checkpoint.run.silos_seen == SILOS
    torch.testing.assert_close(server, mean, rtol=0, atol=1e-6)
