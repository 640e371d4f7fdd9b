"""Measuring updates as they stream in: the same values measure the same however they are cut,
the norm is the float64 one, and bad values are refused naming their tensor."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from coordinator.aggregation.measure import MAX_ABS_VALUE, UpdateStatistics
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from shared.errors import UpdateRejected
from shared.payload import BLOCK_ELEMENTS
from shared.safetensors_stream import StateEncoder
from shared.tensor_codec import CONTROL_PREFIX

# Runs longer than a block, and tensors that end inside blocks.
SHAPES = {"a.lora_A.weight": (8, 5_000), "b.lora_B.weight": (37_000, 2), "c.weight": (3,)}
LAYOUT = FlatLayout.of({k: torch.zeros(s) for k, s in SHAPES.items()})


def _update(seed: int, *, control: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=generator) for k, s in SHAPES.items()}
    if control:
        state |= {
            CONTROL_PREFIX + k: 3 * torch.randn(s, generator=generator) for k, s in SHAPES.items()
        }
    return state


def _measure(data: bytes, shape: UpdateShape, cuts: list[int]) -> UpdateStatistics:
    measured = UpdateStatistics(shape)
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        measured.consume(memoryview(data)[start:end])
    assert measured.complete()
    return measured


@pytest.mark.parametrize("wire", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("control", [False, True])
def test_any_cut_measures_the_same_bit_for_bit(wire: str, control: bool) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype=wire, with_control=control)
    encoder = StateEncoder(_update(0, control=control), dtype=getattr(torch, wire))
    data = encoder.data(0, encoder.numel)
    size = encoder.itemsize
    _, *chunks = encoder.chunks(chunk_bytes=3 * BLOCK_ELEMENTS * size, block=BLOCK_ELEMENTS)
    assert max(map(len, chunks)) == 3 * BLOCK_ELEMENTS * size  # several blocks per chunk
    sent = [int(c) for c in np.cumsum([len(c) for c in chunks])[:-1]]  # the sender's cut
    reference = _measure(data, shape, sent)
    rng = random.Random(1)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(data)), 7))
        other = _measure(data, shape, cuts)
        assert other.norm == reference.norm
        assert other.max_abs == reference.max_abs
    assert _measure(data, shape, []).norm == reference.norm


def test_the_norm_is_the_adapter_values_norm() -> None:
    state = _update(2, control=True)
    shape = UpdateShape(layout=LAYOUT, dtype="float32", with_control=True)
    encoder = StateEncoder(state, dtype=torch.float32)
    measured = _measure(encoder.data(0, encoder.numel), shape, [])
    adapter = np.concatenate([state[k].double().numpy().ravel() for k in SHAPES])
    assert measured.norm == pytest.approx(float(np.linalg.norm(adapter)), rel=1e-6)
    everything = np.concatenate([t.double().numpy().ravel() for t in state.values()])
    assert measured.max_abs == pytest.approx(float(np.abs(everything).max()), rel=1e-7)


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (float("nan"), "non_finite", "NaN or Inf"),
        (float("-inf"), "non_finite", "NaN or Inf"),
        (2 * MAX_ABS_VALUE, "magnitude", "above"),
    ],
)
def test_a_bad_value_is_refused_naming_its_tensor(value: float, reason: str, detail: str) -> None:
    state = _update(3, control=False)
    state["b.lora_B.weight"][30_000, 1] = value
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    encoder = StateEncoder(state, dtype=torch.float32)
    with pytest.raises(UpdateRejected) as refused:
        _measure(encoder.data(0, encoder.numel), shape, [12_345])
    assert refused.value.reason == reason
    assert str(refused.value).count("b.lora_B.weight") == 1 and detail in str(refused.value)
