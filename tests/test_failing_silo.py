"""A silo that cannot train says so at once: the coordinator frees its slot, counts why, shows
it in the round's status, and the round goes on with the others long before its deadline."""

from __future__ import annotations

import time
from pathlib import Path

from bench.data.synthetic_data import write_silo
from coordinator.server import serve
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import SILOS, coordinator_config, tls
from tests.helpers import agents_running, channel, local_agent, run_to_end, small_run


def test_a_silo_whose_training_raises_costs_seconds_not_the_deadline(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    data = {
        name: write_silo(tmp_path / name, train=8, test=0, seed=i) for i, name in enumerate(SILOS)
    }
    with serve(coordinator_config(certs, tiny_model, tmp_path / "ckpt")) as running:
        agents = [
            local_agent(running.port, tls(certs, name), tiny_model, train=data[name])
            for name in SILOS
        ]
        for image in (data["silo-1"] / "images").iterdir():  # read at training time: it raises
            image.unlink()
        with agents_running(agents, running.federation.registry):
            admin = pb_grpc.AdminStub(channel(running.port, tls(certs, "admin")))
            started = time.monotonic()
            status = run_to_end(
                admin, small_run(rounds=1, min_silos=1, round_deadline_s=600), timeout=300
            )
            elapsed = time.monotonic() - started
        failures = running.federation.metrics.registry.get_sample_value(
            "fedmllm_silo_failures_total", {"reason": "exception"}
        )
    assert status.state == pb.RUN_STATE_COMPLETED, status.message
    assert elapsed < 120, f"the round waited {elapsed:.0f} s for the failed silo"
    (summary,) = status.history
    assert list(summary.contributed) == ["silo-2"]
    assert list(summary.failures) == ["silo-1"]
    assert "No such file" in summary.failures["silo-1"]
    assert failures == 1
