"""A real federation: a coordinator process and two silo-agent processes over mutual TLS on
loopback, driven by `fedmllm-admin`, for two rounds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from bench.demo.federation import (
    admin_command,
    prepare,
    processes,
    start_coordinator,
    start_silo,
    wait_for_silos,
)
from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunPhase
from shared.tensor_codec import layout_of
from silo_agent.model import load_silo_model
from silo_agent.trainer import load_global_adapter


def _no_secret_or_sample_in_logs(workdir: Path, logs: Path, names: list[str]) -> None:
    """No private key and no sample content (caption, answer) in any process's log."""
    text = "\n".join(p.read_text(errors="replace") for p in logs.iterdir())
    assert "PRIVATE KEY" not in text
    for name in names:
        key = (workdir / "certs" / f"{name}.key").read_text().splitlines()[1]
        assert key not in text
        for line in (workdir / "data" / name / "train.jsonl").read_text().splitlines():
            record = json.loads(line)
            for field in ("text", "answer"):
                value = record.get(field)
                if isinstance(value, str) and len(value) > 12:
                    assert value not in text, f"{field} of a sample of {name} in a log"


def test_two_silos_two_rounds_end_to_end(tmp_path: Path) -> None:
    workdir, logs = tmp_path, tmp_path / "logs"
    logs.mkdir()
    names = prepare(workdir, silos=2, family="idefics3", train=16, seed=3)
    with processes() as running:
        coordinator, port, _ = start_coordinator(workdir, logs)
        running.append(coordinator)
        running.extend(start_silo(workdir, logs, name, port, threads=1) for name in names)
        admin = admin_command(workdir / "certs", port)
        wait_for_silos(admin, 2, timeout_s=120)
        run = subprocess.run(
            [
                *admin,
                "start-run",
                "--rounds",
                "2",
                "--silos-per-round",
                "2",
                "--min-silos",
                "2",
                "--deadline",
                "120",
                "--lr",
                "0.01",
                "--batch-size",
                "8",
                "--follow",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        round_lines = [line for line in run.stdout.splitlines() if line.startswith("round ")]
        assert len(round_lines) == 2 and all("silos 2/2" in line for line in round_lines)
    for name in names:  # each agent took the one torch thread it was given
        assert "on cpu with 1 torch thread(s)" in (logs / f"{name}.log").read_text()
    _no_secret_or_sample_in_logs(workdir, logs, names)

    store = CheckpointStore(workdir / "checkpoints")
    latest = store.load_latest()
    assert latest is not None and latest.round == 2
    assert latest.run.phase is RunPhase.COMPLETED
    assert all(r.contributed == ["silo-1", "silo-2"] for r in latest.run.history)
    initial = store.round_dirs(latest.run.run_id)  # keep=5: round 0 is there
    from safetensors.torch import load_file

    start = load_file(str(initial[0] / "adapter.safetensors"))
    assert initial[0].name == "round-00000"
    assert any(not torch.equal(start[k], latest.adapter[k]) for k in start)

    silo = load_silo_model(workdir / "model", device="cpu")
    assert layout_of(latest.adapter) == silo.adapter_layout
    load_global_adapter(silo, latest.adapter)

    with processes() as running:  # a restarted coordinator reloads the finished run
        coordinator, port, _ = start_coordinator(workdir, logs)
        running.append(coordinator)
        status = subprocess.run(
            [*admin_command(workdir / "certs", port), "status"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    assert f"run {latest.run.run_id}: completed, 2/2 rounds" in status
