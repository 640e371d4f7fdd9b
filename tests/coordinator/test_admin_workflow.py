"""The admin's workflow: pause and resume a run, export a round as a PEFT adapter directory."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import grpc
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import AutoModelForImageTextToText

from coordinator.admin_cli import export_adapter
from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator
from shared.silo_data import read_split
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.predict import main as predict_main
from tests.conftest import tls
from tests.helpers import ProtocolSilo, channel, constant_delta


def _wait(admin: pb_grpc.AdminStub, done: object, timeout: float = 30) -> pb.RunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = admin.GetStatus(pb.StatusRequest())
        if done(status):  # type: ignore[operator]
            return status
        time.sleep(0.05)
    raise TimeoutError


def _answer(silo: ProtocolSilo, value: float) -> None:
    task = silo.next_task()
    silo.upload(task, constant_delta(silo.download(task), value))


def test_pause_holds_the_next_round_and_resume_goes_on(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    admin = pb_grpc.AdminStub(channel(coordinator.port, tls(certs, "admin")))
    spec = RunSpec(rounds=2, silos_per_round=1, min_silos=1, round_deadline_s=30)
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    assert admin.PauseRun(pb.StopRequest()).state == pb.RUN_STATE_PAUSED
    _answer(silo, 0.1)  # the open round 1 still finishes
    _wait(admin, lambda s: s.completed_rounds == 1)
    with pytest.raises(queue.Empty):  # no round 2 while paused
        silo.next_task(timeout=1.5)
    with pytest.raises(grpc.RpcError) as twice:
        admin.PauseRun(pb.StopRequest())
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert admin.ResumeRun(pb.StopRequest()).state == pb.RUN_STATE_RUNNING
    _answer(silo, 0.1)
    final = _wait(admin, lambda s: s.state == pb.RUN_STATE_COMPLETED)
    assert final.completed_rounds == 2
    silo.close()


def test_export_loads_with_peft_and_predicts(
    coordinator: RunningCoordinator,
    certs: Path,
    tiny_model: Path,
    tmp_path: Path,
    silo_data: dict[str, Path],
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    admin = pb_grpc.AdminStub(channel(coordinator.port, tls(certs, "admin")))
    spec = RunSpec(rounds=1, silos_per_round=1, min_silos=1, round_deadline_s=30)
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    _answer(silo, 0.25)
    _wait(admin, lambda s: s.state == pb.RUN_STATE_COMPLETED)
    header = export_adapter(admin, round_index=0, out=tmp_path / "adapter")
    assert header.round == 1
    model = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_model), str(tmp_path / "adapter")
    )
    loaded = get_peft_model_state_dict(model)
    saved = CheckpointStore(tmp_path / "checkpoints").load_latest()
    assert saved is not None and loaded.keys() == saved.adapter.keys()
    for name, tensor in saved.adapter.items():
        torch.testing.assert_close(loaded[name], tensor)
    predictions = tmp_path / "predictions.jsonl"
    predict_main(
        [
            "--model",
            str(tiny_model),
            "--adapter",
            str(tmp_path / "adapter"),
            "--data",
            str(silo_data["silo-1"]),
            "--out",
            str(predictions),
            "--device",
            "cpu",
        ]
    )
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["id"] for r in rows] == [s.id for s in read_split(silo_data["silo-1"], "test")]
    for row in rows:
        assert row["prediction"] in ("(A) not-hateful", "(B) hateful")
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    with pytest.raises(grpc.RpcError) as missing:
        export_adapter(admin, round_index=7, out=tmp_path / "none")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "kept: 0, 1" in (missing.value.details() or "")
    silo.close()
