"""A run's kernels are compiled before its first round: after the warm-up, a round of real
uploads (folded live and from spools, then the step) compiles nothing; without it, the same
round compiles its kernels then. A run that starts warms them up in a thread of its own."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import torch
import torch._dynamo

from bench.server_optimizer import lora_layout
from bench.server_round import Case, RoundBench
from coordinator.global_model import GlobalModel
from coordinator.kernel_warm_up import warm_up
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator
from coordinator.strategies.kernels import fused, hyper
from shared.wire.v1 import federation_pb2 as pb
from tests.helpers import admin_stub


def _compiled_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.mark.parametrize(("strategy", "wire"), [("fedadam", "bfloat16"), ("fedavgm", "float16")])
def test_after_the_warm_up_a_round_compiles_nothing(
    strategy: str, wire: str, tmp_path: Path
) -> None:
    flat = lora_layout(3_000_000)  # several 4 MiB chunks per update, and a short last one
    generator = torch.Generator().manual_seed(0)
    delta = {t.name: 0.01 * torch.randn(t.shape, generator=generator) for t in flat.tensors}
    bench = RoundBench(flat=flat, delta=delta, wire=wire, work=tmp_path)
    bench.write_spools(3)
    case = Case(strategy, 3, wire, "shuffled")  # one folded live, the others from spools

    def model() -> GlobalModel:
        spec = RunSpec(strategy=strategy, wire_dtype=wire)
        return GlobalModel.start(spec, flat, flat.unpack(flat.zeros()))

    torch._dynamo.reset()  # (what earlier tests compiled)
    before = _compiled_graphs()
    bench.ours(model(), case)
    assert _compiled_graphs() > before  # without the warm-up, the round compiles

    torch._dynamo.reset()
    warmed = model()
    warm_up(warmed)
    before = _compiled_graphs()
    bench.ours(warmed, case)
    bench.ours(warmed, case)
    assert _compiled_graphs() == before


def test_calls_made_while_a_kernel_compiles_wait_for_it_rather_than_compile_it_again() -> None:
    """The run's warm-up and an early upload (or two uploads' first chunks) call a kernel at
    once: it is compiled once, the other call waiting for it."""

    def scaled_plus_one(values: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return values * h[0] + 1.0

    values = torch.arange(4096, dtype=torch.float32)
    start, results = threading.Barrier(2), []

    def call() -> None:
        start.wait()
        results.append(fused(scaled_plus_one)(values, hyper(2.0)))

    before = _compiled_graphs()
    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _compiled_graphs() == before + 1
    assert len(results) == 2 and all(torch.equal(r, values * 2.0 + 1.0) for r in results)


def test_a_started_run_warms_up_its_kernels(
    coordinator: RunningCoordinator, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.kernel_warm_up")
    spec = RunSpec(rounds=1, silos_per_round=1, strategy="fedyogi", wire_dtype="bfloat16")
    admin_stub(coordinator, certs).StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = [r.getMessage() for r in caplog.records if r.name == "coordinator.kernel_warm_up"]
        if ready:
            break
        time.sleep(0.1)
    assert ready and ready[0].startswith("kernels for bfloat16 updates and the fedyogi step")
