"""A silo of two training processes (torchrun's launcher, gloo on CPU) against a real
coordinator: it joins as one silo, and its round's delta is the one-process delta of the same
global batches, with DDP alone and with the base weights sharded by FSDP."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunSpec
from coordinator.schedule import training_plan
from coordinator.server import RunningCoordinator
from shared.demo.federation import processes
from shared.demo.synthetic_data import write_silo
from shared.silo_data import read_split
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.client import plan_of
from silo_agent.model import load_silo_model
from silo_agent.trainer import train_round
from tests.conftest import tls
from tests.helpers import channel, run_to_end


def _two_process_silo(port: int, certs: Path, model: Path, data: Path, *extra: str) -> list[str]:
    files = tls(certs, "silo-1")
    return [
        sys.executable,
        "-m",
        "silo_agent",
        "--nproc-per-node",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--micro-batch",
        "2",
        "--lora-dropout",
        "0",  # dropout masks differ with the split; the gradients must not
        "--data",
        str(data),
        "--model",
        str(model),
        "--coordinator",
        f"localhost:{port}",
        "--cert",
        str(files.cert),
        "--key",
        str(files.key),
        "--ca",
        str(files.ca),
        *extra,
    ]


def _wait_for_one_silo(coordinator: RunningCoordinator, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not coordinator.federation.registry.connected():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the two-process silo did not join:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="ddp"),
        # the same again with FSDP (another 30-40 s of process start-up on 2 cores)
        pytest.param(
            ["--shard", "fsdp", "--gradient-checkpointing"], id="fsdp", marks=pytest.mark.slow
        ),
    ],
)
def test_two_processes_train_as_one_silo_with_the_one_process_delta(
    coordinator: RunningCoordinator,
    certs: Path,
    tiny_model: Path,
    tmp_path: Path,
    extra: list[str],
) -> None:
    data = write_silo(tmp_path / "silo-1", train=12, test=0, seed=1)  # FSDP silos train only
    log = tmp_path / "silo.log"
    admin = pb_grpc.AdminStub(channel(coordinator.port, tls(certs, "admin")))
    # 12 samples in batches of 11 and 1: uneven shards, and a batch that one rank lacks
    spec = RunSpec(
        rounds=1,
        silos_per_round=1,
        min_silos=1,
        round_deadline_s=120,
        learning_rate=1e-2,
        batch_size=11,
        proximal_mu=0.1,
        local_optimizer="sgd",
    )
    command = _two_process_silo(coordinator.port, certs, tiny_model, data, *extra)
    with processes() as running:
        running.append(subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT))
        _wait_for_one_silo(coordinator, log, timeout_s=180)
        status = run_to_end(admin, spec)
        silos = admin.ListSilos(pb.StatusRequest()).silos
    assert status.state == pb.RUN_STATE_COMPLETED, status.message + log.read_text()
    assert [s.silo_id for s in silos] == ["silo-1"]
    assert [list(r.contributed) for r in status.history] == [["silo-1"]]
    assert "2 training processes" in log.read_text()
    if "fsdp" in extra:
        assert "FSDP: rank 1 holds" in log.read_text()

    store = CheckpointStore(tmp_path / "checkpoints")
    start, after = (
        load_file(str(d / "adapter.safetensors")) for d in store.round_dirs(status.run_id)[:2]
    )
    silo = load_silo_model(tiny_model, device="cpu", lora_dropout=0.0)
    plan = plan_of(training_plan(spec, 1))
    one = train_round(silo, read_split(data), plan, start)
    assert one.steps == 2
    for name, delta in one.delta.items():
        torch.testing.assert_close(after[name] - start[name], delta, rtol=1e-4, atol=1e-6)
    assert abs(status.history[0].mean_train_loss - one.mean_loss) < 1e-4
