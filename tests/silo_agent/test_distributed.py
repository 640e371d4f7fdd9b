"""A silo of two training processes (torchrun's launcher, gloo on CPU) beside a one-process
silo, against a real coordinator: it joins as one silo, and its updates are the one-process
updates of the same global batches, with DDP alone and with the base weights sharded by FSDP."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.data.synthetic_data import write_silo
from bench.demo.federation import processes
from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunSpec
from coordinator.schedule import training_plan
from coordinator.server import RunningCoordinator
from shared.silo_data import read_split
from shared.tensor_codec import StateDict
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.client import Backoff, SiloAgent
from silo_agent.model import load_silo_model
from silo_agent.round_task import plan_of
from silo_agent.trainer import ControlVariates, train_round
from tests.conftest import SILOS, tls
from tests.helpers import agents_running, channel, run_to_end


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


def _wait_for_silos(coordinator: RunningCoordinator, count: int, log: Path) -> None:
    deadline = time.monotonic() + 180
    while len(coordinator.federation.registry.connected()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the silos did not join; the two-process one's log:\n{log.read_text()}"
            )
        time.sleep(0.2)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="ddp"),
        # the same again with FSDP (another 20-40 s of process start-up on 2 cores)
        pytest.param(
            ["--shard", "fsdp", "--gradient-checkpointing"], id="fsdp", marks=pytest.mark.slow
        ),
    ],
)
def test_two_processes_train_as_one_silo_with_the_one_process_update(
    coordinator: RunningCoordinator,
    certs: Path,
    tiny_model: Path,
    tmp_path: Path,
    extra: list[str],
) -> None:
    """silo-1 trains in two processes, silo-2 in one (a thread of this test); two SCAFFOLD
    rounds, whose second corrects every local step by c - c_k (both non-zero by then)."""
    data = {  # FSDP silos train only: no test split
        name: write_silo(tmp_path / name, train=12, test=0, seed=i)
        for i, name in enumerate(SILOS, start=1)
    }
    log = tmp_path / "silo-1.log"
    admin = pb_grpc.AdminStub(channel(coordinator.port, tls(certs, "admin")))
    # batches of 11 and 1: uneven shards, and a batch that one rank lacks
    spec = RunSpec(
        rounds=2,
        strategy="scaffold",
        silos_per_round=2,
        min_silos=2,
        round_deadline_s=120,
        learning_rate=1e-2,
        batch_size=11,
        proximal_mu=0.1,
        local_optimizer="sgd",
        wire_dtype="float32",  # updates as computed, compared with a one-process recomputation
    )
    partner = SiloAgent(
        coordinator=f"localhost:{coordinator.port}",
        tls=tls(certs, "silo-2"),
        silo=load_silo_model(tiny_model, device="cpu", lora_dropout=0.0),
        samples=read_split(data["silo-2"]),
        backoff=Backoff(0.2, 1.0),
    )
    command = _two_process_silo(coordinator.port, certs, tiny_model, data["silo-1"], *extra)
    with processes() as running:
        running.append(subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT))
        with agents_running([partner], coordinator.federation.registry):
            _wait_for_silos(coordinator, 2, log)
            status = run_to_end(admin, spec)
            silos = admin.ListSilos(pb.StatusRequest()).silos
    assert status.state == pb.RUN_STATE_COMPLETED, status.message + log.read_text()
    assert sorted(s.silo_id for s in silos) == SILOS  # two processes, one silo
    assert [sorted(r.contributed) for r in status.history] == [SILOS, SILOS]
    assert "2 training processes" in log.read_text()
    if "fsdp" in extra:
        assert "FSDP: rank 1 holds" in log.read_text()
    store = CheckpointStore(tmp_path / "checkpoints")
    adapters = [load_file(str(d / "adapter.safetensors")) for d in store.round_dirs(status.run_id)]
    _assert_one_process_rounds(tiny_model, data, spec, status, adapters)


def _assert_one_process_rounds(
    model: Path,
    data: dict[str, Path],
    spec: RunSpec,
    status: pb.RunStatus,
    adapters: list[StateDict],
) -> None:
    """Each round's global step equals the mean of both silos' one-process updates."""
    silo = load_silo_model(model, device="cpu", lora_dropout=0.0)
    controls = {name: ControlVariates() for name in SILOS}
    server_control = {n: torch.zeros_like(t) for n, t in adapters[0].items()}
    for index, summary in enumerate(status.history):
        start, after = adapters[index], adapters[index + 1]
        plan = plan_of(training_plan(spec, index + 1))
        results = [
            train_round(
                silo,
                read_split(data[name]),
                plan,
                start,
                server_control=server_control,
                controls=controls[name],
            )
            for name in SILOS
        ]
        assert all(r.steps == 2 for r in results)
        for name, tensor in start.items():  # equal sample counts, server learning rate 1
            _assert_same_update(after[name] - tensor, sum(r.delta[name] for r in results) / 2)
        assert abs(summary.mean_train_loss - sum(r.mean_loss for r in results) / 2) < 1e-4
        changes = [r.control_delta for r in results]
        assert all(c is not None for c in changes)
        for name, change in zip(SILOS, changes, strict=True):  # the round was aggregated
            controls[name].propose(f"{name}/{index}", change)  # type: ignore[arg-type]
            controls[name].confirm(f"{name}/{index}")
        server_control = {
            n: c + sum(change[n] for change in changes) / 2  # type: ignore[index]
            for n, c in server_control.items()
        }


def _assert_same_update(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to the order of float sums, which AdamW (the plan's optimizer until the
    coordinator asks for SGD) amplifies where a gradient is as small as its epsilon: a few
    elements may differ by a small part of one step (lr 1e-2); a wrong update moves most."""
    close = torch.isclose(actual, expected, rtol=1e-4, atol=1e-6)
    assert float(close.float().mean()) > 0.97, f"{int((~close).sum())} of {close.numel()} differ"
    assert float((actual - expected).abs().max()) < 5e-4
