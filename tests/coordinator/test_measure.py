"""Measuring updates as they stream in: the same values measure the same however they are cut,
the norm is the float64 one, bad values are refused naming their tensor, and large values
within the bound pass."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from coordinator.aggregation.measure import MAX_ABS_VALUE, TRUSTED_NORM, UpdateStatistics
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from shared.errors import UpdateRejected
from shared.payload import BLOCK_ELEMENTS, PayloadCheck
from shared.safetensors_stream import StateEncoder
from shared.tensor_codec import CONTROL_PREFIX

# Runs longer than a block, and tensors that end inside blocks.
SHAPES = {"a.lora_A.weight": (8, 5_000), "b.lora_B.weight": (37_000, 2), "c.weight": (3,)}
LAYOUT = FlatLayout.of({k: torch.zeros(s) for k, s in SHAPES.items()})
WIRES = ("float32", "bfloat16", "float16")


def _update(seed: int, *, control: bool, loud: bool = False) -> dict[str, torch.Tensor]:
    """Random values; `loud`: a.lora_A.weight is all 1e4 (in range, but its blocks' norms
    are above TRUSTED_NORM, so they are checked value by value)."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=generator) for k, s in SHAPES.items()}
    if control:
        state |= {
            CONTROL_PREFIX + k: 3 * torch.randn(s, generator=generator) for k, s in SHAPES.items()
        }
    if loud:
        state["a.lora_A.weight"].fill_(1e4)
    return state


def _norm(state: dict[str, torch.Tensor], wire: str) -> float:
    """The float64 L2 norm of the adapter values as they travel."""
    wide = [state[k].to(getattr(torch, wire)).double().numpy().ravel() for k in SHAPES]
    return float(np.linalg.norm(np.concatenate(wide)))


class Waiting:
    """The sink of an update offered a live fold and not (yet) granted one: it takes no
    unchecked values, and gets the checked ones, which it keeps here in order."""

    def __init__(self) -> None:
        self.taken: list[torch.Tensor] = []

    def add(self, element: int, values: torch.Tensor) -> None:
        assert element == sum(map(len, self.taken))
        self.taken.append(values.clone())

    def add_measuring(self, element: int, values: torch.Tensor) -> torch.Tensor | None:
        return None

    def add_chunk(
        self, element: int, chunk: bytes, blocks: int, norms: int, check: PayloadCheck | None
    ) -> bool:
        return False


def _measure(
    data: bytes, shape: UpdateShape, cuts: list[int], sink: Waiting | None = None
) -> UpdateStatistics:
    measured = UpdateStatistics(shape, sink=sink)
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        measured.consume(memoryview(data)[start:end])
    assert measured.complete()
    if sink is not None:  # every value handed on, once checked
        assert torch.cat(sink.taken).view(torch.uint8).numpy().tobytes() == data
    return measured


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(("control", "loud"), [(False, False), (True, False), (True, True)])
def test_any_cut_measures_the_same_bit_for_bit(wire: str, control: bool, loud: bool) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype=wire, with_control=control)
    encoder = StateEncoder(_update(0, control=control, loud=loud), dtype=getattr(torch, wire))
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
    assert _measure(data, shape, []).norm == reference.norm


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("loud", [False, True])
@pytest.mark.parametrize("waiting", [False, True], ids=["alone", "offered a live fold"])
def test_the_norm_is_the_adapter_values_norm(wire: str, loud: bool, waiting: bool) -> None:
    state = _update(2, control=True, loud=loud)
    shape = UpdateShape(layout=LAYOUT, dtype=wire, with_control=True)
    encoder = StateEncoder(state, dtype=getattr(torch, wire))
    sink = Waiting() if waiting else None  # (16-bit blocks: measured in a compiled loop)
    measured = _measure(encoder.data(0, encoder.numel), shape, [], sink)
    # Blocks are summed in float32: random squares' rounding errors mostly cancel, equal
    # squares' (1e8 each) add up.
    assert measured.norm == pytest.approx(_norm(state, wire), rel=1e-4 if loud else 1e-5)
    assert (measured.norm > TRUSTED_NORM) == loud


def test_large_values_within_the_bound_pass_in_control_tensors_too() -> None:
    state = _update(4, control=True)
    state[CONTROL_PREFIX + "b.lora_B.weight"].fill_(1e4)  # blocks' norms far above the bound
    state[CONTROL_PREFIX + "c.weight"][1] = MAX_ABS_VALUE
    state["b.lora_B.weight"][1_000, 0] = -MAX_ABS_VALUE
    shape = UpdateShape(layout=LAYOUT, dtype="float32", with_control=True)
    encoder = StateEncoder(state, dtype=torch.float32)
    measured = _measure(encoder.data(0, encoder.numel), shape, [98_765])
    assert measured.norm == pytest.approx(_norm(state, "float32"), rel=1e-5)


# Float32's next value above the bound; 1e30, whose float32 square overflows to Inf. Float16
# holds neither (its largest value is 65504).
JUST_ABOVE = float(np.nextafter(np.float32(MAX_ABS_VALUE), np.float32(np.inf)))
CASES = [
    *[(w, v, "non_finite", "NaN or Inf") for w in WIRES for v in (math.nan, math.inf, -math.inf)],
    *[(w, 1.5 * MAX_ABS_VALUE, "magnitude", "1.5e+06 above") for w in WIRES[:2]],
    *[(w, -1e30, "magnitude", "1e+30 above") for w in WIRES[:2]],
    ("float32", JUST_ABOVE, "magnitude", "1e+06 above"),
]


@pytest.mark.parametrize("waiting", [False, True], ids=["alone", "offered a live fold"])
@pytest.mark.parametrize("control", [False, True])
@pytest.mark.parametrize(("wire", "value", "reason", "detail"), CASES)
def test_a_bad_value_is_refused_naming_its_tensor(
    wire: str, value: float, reason: str, detail: str, control: bool, waiting: bool
) -> None:
    state = _update(3, control=control)
    name = (CONTROL_PREFIX if control else "") + "b.lora_B.weight"
    state[name][30_000, 1] = value
    shape = UpdateShape(layout=LAYOUT, dtype=wire, with_control=control)
    encoder = StateEncoder(state, dtype=getattr(torch, wire))
    sink = Waiting() if waiting else None
    with pytest.raises(UpdateRejected) as refused:
        _measure(encoder.data(0, encoder.numel), shape, [12_345], sink)
    if sink is not None:  # the values handed on stop before the refused one
        taken = torch.cat([torch.zeros(0), *(t.float() for t in sink.taken)])
        assert bool(torch.isfinite(taken).all()) and float(taken.abs().max()) <= MAX_ABS_VALUE
    assert refused.value.reason == reason
    assert str(refused.value).count("b.lora_B.weight") == 1 and detail in str(refused.value)
    assert f"{name}:" in str(refused.value)
