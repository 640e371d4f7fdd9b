"""Streaming FedAvg against an independent NumPy computation, and its fixed point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from coordinator.aggregation import FedAvgAccumulator, apply_delta


def test_weighted_mean_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shapes = {"a.lora_A.weight": (8, 16), "a.lora_B.weight": (16, 8)}
    global_np = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    counts = [3, 17, 80]
    deltas = [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in counts
    ]
    accumulator = FedAvgAccumulator({k: torch.from_numpy(v) for k, v in global_np.items()})
    for index, (delta, n) in enumerate(zip(deltas, counts, strict=True)):
        path = tmp_path / f"u{index}.safetensors"
        save_file({k: torch.from_numpy(v) for k, v in delta.items()}, str(path))
        accumulator.fold_file(path, n)
    result = apply_delta(
        {k: torch.from_numpy(v) for k, v in global_np.items()}, accumulator.mean_delta()
    )
    for name in shapes:
        expected = global_np[name] + sum(
            n * d[name].astype(np.float64) for d, n in zip(deltas, counts, strict=True)
        ) / sum(counts)
        assert np.max(np.abs(result[name].numpy() - expected)) <= 1e-6
    assert accumulator.total_samples == 100 and accumulator.updates == 3


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=4, max_size=4),
    counts=st.lists(st.integers(1, 10_000), min_size=1, max_size=6),
)
def test_fedavg_of_identical_updates_is_that_update(values: list[float], counts: list[int]) -> None:
    update = {"w": torch.tensor(values, dtype=torch.float32).reshape(2, 2)}
    accumulator = FedAvgAccumulator({"w": torch.zeros(2, 2)})
    for n in counts:
        accumulator.fold(update, n)
    torch.testing.assert_close(accumulator.mean_delta()["w"], update["w"], rtol=1e-6, atol=1e-4)


def test_bf16_global_keeps_its_dtype() -> None:
    global_adapter = {"w": torch.ones(4, dtype=torch.bfloat16)}
    accumulator = FedAvgAccumulator(global_adapter)
    accumulator.fold({"w": torch.full((4,), 0.5, dtype=torch.bfloat16)}, 2)
    result = apply_delta(global_adapter, accumulator.mean_delta())
    assert result["w"].dtype == torch.bfloat16
    assert torch.equal(result["w"], torch.full((4,), 1.5, dtype=torch.bfloat16))
