"""Federated evaluation: every E rounds the silos with a test split, an evaluation-only silo
among them, evaluate the global adapter; the means are kept per round and exported."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from coordinator.server import serve
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import EVALUATOR, SILOS, coordinator_config, tls
from tests.helpers import agents_running, channel, local_agent, run_to_end, small_run


def test_evaluation_rounds_with_an_evaluation_only_silo(
    certs: Path, tiny_model: Path, silo_data: dict[str, Path], tmp_path: Path
) -> None:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "ckpt")) as running:
        agents = [
            local_agent(
                running.port,
                tls(certs, name),
                tiny_model,
                train=None if name == EVALUATOR else silo_data[name],
                test=silo_data["silo-1" if name == EVALUATOR else name],
            )
            for name in [*SILOS, EVALUATOR]
        ]
        admin = pb_grpc.AdminStub(channel(running.port, tls(certs, "admin")))
        spec = small_run(rounds=3, silos_per_round=3, eval_every=2, prompt_variant="improved")
        with agents_running(agents, running.federation.registry):
            status = run_to_end(admin, spec)
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            exported = reply.read().decode()
    assert status.state == pb.RUN_STATE_COMPLETED, status.message
    history = list(status.history)
    assert all(EVALUATOR not in r.selected for r in history)  # never asked to train
    assert [bool(r.evaluation) for r in history] == [False, True, True]  # every 2nd, and last
    for record in history[1:]:
        assert sorted(record.evaluated_by) == sorted([*SILOS, EVALUATOR])
        assert set(record.evaluation) == {"hateful_memes/accuracy", "hateful_memes/auc"}
        assert 0.0 <= record.evaluation["hateful_memes/accuracy"] <= 1.0
    exported_auc = exported.split('fedmllm_eval_metric{metric="hateful_memes/auc"} ')[1]
    assert float(exported_auc.split()[0]) == pytest.approx(
        history[-1].evaluation["hateful_memes/auc"]
    )
