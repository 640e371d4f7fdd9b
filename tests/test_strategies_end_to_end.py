"""Every strategy for three rounds through a real coordinator and real silo agents (threads of
this process, real gRPC over mutual TLS, real peft models)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.data.synthetic_data import write_silo
from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunSpec
from coordinator.server import serve
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import SILOS, coordinator_config, tls
from tests.helpers import agents_running, channel, local_agent, run_to_end, small_run


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """silo-1 fully multimodal; silo-2 with every third caption missing."""
    root = tmp_path_factory.mktemp("mixed")
    data = {
        name: write_silo(root / name, train=8, test=0, seed=i)
        for i, name in enumerate(SILOS, start=1)
    }
    path = data["silo-2"] / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for index, record in enumerate(records):
        if index % 3 == 0:
            record["text"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return data


@pytest.fixture
def federation(
    certs: Path, tiny_model: Path, tmp_path: Path, mixed_data: dict[str, Path]
) -> Iterator[tuple[int, Path]]:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "ckpt")) as running:
        agents = [
            local_agent(running.port, tls(certs, name), tiny_model, train=mixed_data[name])
            for name in SILOS
        ]
        with agents_running(agents, running.federation.registry):
            yield running.port, tmp_path / "ckpt"


def _run(port: int, certs: Path, spec: RunSpec) -> pb.RunStatus:
    return run_to_end(pb_grpc.AdminStub(channel(port, tls(certs, "admin"))), spec)


@pytest.mark.parametrize(
    "strategy", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova"]
)
def test_three_rounds_per_strategy(
    strategy: str, federation: tuple[int, Path], certs: Path
) -> None:
    port, checkpoints = federation
    eta = 1e-2 if strategy in ("fedadam", "fedyogi", "fedadagrad") else None
    spec = small_run(rounds=3, strategy=strategy, eta=eta)
    status = _run(port, certs, spec)
    assert status.state == pb.RUN_STATE_COMPLETED, status.message
    assert [r.round for r in status.history] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r.mean_train_loss)) for r in status.history)
    assert all(list(r.contributed) == SILOS for r in status.history)
    store = CheckpointStore(checkpoints)
    latest = store.load_latest()
    assert latest is not None and latest.round == 3
    start = load_file(str(store.round_dirs(status.run_id)[0] / "adapter.safetensors"))
    assert any(not torch.equal(start[k], latest.adapter[k]) for k in start)
    state = latest.strategy_state
    assert int(state["rounds_applied"]) == 3
    moved = {
        "fedavgm": ["velocity"],
        "fedadam": ["m", "v"],
        "fedyogi": ["m", "v"],
        "fedadagrad": ["m", "v"],
        "scaffold": ["control"],
    }.get(strategy, [])
    for name in moved:  # the strategy's own state moved: it was this strategy that ran
        initial = 1e-6 if name == "v" else 0.0
        assert float((state[name] - initial).abs().sum()) > 0, name


def test_regularisers_and_prompt_strategy_end_to_end(
    federation: tuple[int, Path], certs: Path
) -> None:
    port, _ = federation
    spec = small_run(
        strategy="fedadam",
        eta=1e-2,
        proximal_mu=0.01,
        gamma_max=0.1,
        mask_skip_layers=0,
        prompt_variant="improved",
    )
    status = _run(port, certs, spec)
    assert status.state == pb.RUN_STATE_COMPLETED, status.message
    # silo-2 misses 3 of its 16 modality slots, silo-1 none: 8 samples each
    expected_gamma = (0.0 * 8 + 0.1 * 3 / 16 * 8) / 16
    assert [r.mean_gamma for r in status.history] == pytest.approx([expected_gamma] * 2)
    assert status.history[0].learning_rate == pytest.approx(1e-2)
