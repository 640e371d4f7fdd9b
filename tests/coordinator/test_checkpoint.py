"""Atomic per-round checkpoints: what a crash can and cannot leave behind."""

from __future__ import annotations

from pathlib import Path

import torch

from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RoundRecord, RunPhase, RunRecord, RunSpec


def _record(run: RunRecord, index: int) -> None:
    run.history.append(
        RoundRecord(
            round=index,
            selected=["a", "b"],
            contributed=["a"],
            num_samples=5,
            mean_train_loss=1.5,
            bytes_sent=10,
            bytes_received=5,
            seconds=0.1,
            rejected=0,
        )
    )


def test_latest_round_reloads_with_its_history(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    run = RunRecord(run_id="run-x", spec=RunSpec(rounds=3))
    store.save_round(run, 0, {"w": torch.zeros(2)}, {})
    for index in (1, 2, 3):
        _record(run, index)
        store.save_round(run, index, {"w": torch.full((2,), float(index))}, {"m": torch.ones(2)})
    loaded = CheckpointStore(tmp_path).load_latest()
    assert loaded is not None
    assert loaded.round == 3 and loaded.run.completed_rounds == 3
    assert loaded.run.spec == RunSpec(rounds=3) and loaded.run.phase is RunPhase.RUNNING
    assert torch.equal(loaded.adapter["w"], torch.full((2,), 3.0))
    kept = sorted(p.name for p in (tmp_path / "runs" / "run-x").iterdir())
    assert kept == ["round-00002", "round-00003"]


def test_half_written_round_is_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    run = RunRecord(run_id="run-y", spec=RunSpec())
    _record(run, 1)
    store.save_round(run, 1, {"w": torch.ones(2)}, {})
    crashed = tmp_path / "runs" / "run-y" / ".round-00002.tmp-999"
    crashed.mkdir()
    (crashed / "adapter.safetensors").write_bytes(b"partial")
    loaded = store.load_latest()
    assert loaded is not None and loaded.round == 1


def test_stop_updates_the_saved_run_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    run = RunRecord(run_id="run-z", spec=RunSpec())
    store.save_round(run, 0, {"w": torch.ones(2)}, {})
    run.phase, run.message = RunPhase.STOPPED, "stopped by the admin"
    store.update_run(run)
    loaded = store.load_latest()
    assert loaded is not None and loaded.run.phase is RunPhase.STOPPED


def test_fresh_directory_has_no_checkpoint(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "new").load_latest() is None
