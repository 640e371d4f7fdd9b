"""A silo that cannot train says why: one TrainingFailed with a reason and a one-line detail."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from shared.adapter import initial_adapter, load_base_config
from shared.silo_data import read_split
from silo_agent.failures import TrainingFailed, step_failures
from silo_agent.model import load_silo_model
from silo_agent.trainer import LocalPlan, train_round

PLAN = LocalPlan(learning_rate=1e-2, local_epochs=1, batch_size=2, seed=0)


def test_a_non_finite_loss_names_the_step(tiny_llava: Path, silo_data: dict[str, Path]) -> None:
    silo = load_silo_model(tiny_llava, device="cpu")
    _, state = initial_adapter(load_base_config(tiny_llava), seed=0)
    poisoned = {
        k: torch.full_like(v, float("nan")) if ".lora_B." in k else v for k, v in state.items()
    }
    with pytest.raises(TrainingFailed) as failed:
        train_round(silo, read_split(silo_data["silo-1"])[:4], PLAN, poisoned, label="round 3")
    assert failed.value.reason == "non_finite_loss"
    assert failed.value.detail == "round 3: step 1: loss nan"


def test_a_sample_that_cannot_be_batched_names_the_family_and_the_mix(
    tiny_llava: Path, silo_data: dict[str, Path], tmp_path: Path
) -> None:
    silo = load_silo_model(tiny_llava, device="cpu")
    _, state = initial_adapter(load_base_config(tiny_llava), seed=0)
    samples = read_split(silo_data["silo-1"])[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")  # e.g. replaced on disk after the silo started
    with pytest.raises(TrainingFailed) as failed:
        train_round(silo, [samples[0], replace(samples[1], image=broken)], PLAN, state)
    assert failed.value.reason == "batching"
    assert failed.value.detail.startswith("llava: cannot batch image+text samples (")
    assert "\n" not in str(failed.value)


def test_an_allocation_failure_is_out_of_memory() -> None:
    with pytest.raises(TrainingFailed) as failed, step_failures("llava", "round 2: step 4"):
        torch.empty(1 << 50, dtype=torch.uint8)  # a real allocation the host cannot serve
    assert failed.value.reason == "out_of_memory"
    assert failed.value.detail.startswith("round 2: step 4: ")
    assert "lower the batch size or use --quantize 4bit" in failed.value.detail
    assert isinstance(failed.value, RuntimeError)  # callers that catch runtime failures still do
