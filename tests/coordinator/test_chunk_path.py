"""Chunks cut as the silo agent cuts them (whole norm blocks from each run's start) are measured,
and folded live, by one native call each on the chunk's own bytes: the same norms and the same
sums, bit for bit, as the path through tensors; refusals name their tensor as before; and where
the loops cannot add, the live fold ends and the update is folded from its spool."""

from __future__ import annotations

import ctypes
import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.aggregation import kernels, native
from coordinator.aggregation.measure import UpdateStatistics
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.sums import RoundSums
from shared.errors import UpdateRejected
from shared.payload import BLOCK_ELEMENTS
from tests.coordinator.live_uploads import (
    LAYOUT,
    NAMES,
    Upload,
    assert_same_sums,
    interleave,
    new_fold,
    payload_of,
    reference,
    sender_chunks,
    update_shape,
)
from tests.helpers import failing_spool_reads

CHUNK_CALLS = ("measure_chunk", "check_chunk", "add_measured_chunk")


def _served(wire: str) -> bool:
    """Whether the native loops measure and add `wire` values on this machine."""
    loaded = native.library() is not None
    return loaded and (wire == "float32" or (wire == "bfloat16" and kernels.native_bfloat16()))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each native chunk call ran (each still runs), from here on (the loops'
    checks, which run once, are done first)."""
    _served("bfloat16")
    counted: Counter[str] = Counter()
    originals = {name: getattr(native, name) for name in CHUNK_CALLS}

    def spying(name: str) -> Callable[..., Any]:
        def spy(*args: Any, **kwargs: Any) -> Any:
            counted[name] += 1
            if kwargs.get("spools"):  # add_measured_chunk carrying spooled updates
                counted["carrying"] += 1
            if kwargs.get("check") is not None:  # add_measured_chunk checking the chunk too
                counted["checking"] += 1
            return originals[name](*args, **kwargs)

        return spy

    for name in CHUNK_CALLS:
        monkeypatch.setattr(native, name, spying(name))
    return counted


def _values(count: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    values = torch.randn(count, generator=generator)
    values *= torch.exp2(torch.randint(-20, 4, (count,), generator=generator).float())
    return values.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("write", [False, True])
def test_a_chunk_read_from_its_bytes_adds_and_measures_as_its_tensor(
    dtype: torch.dtype, write: bool
) -> None:
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    values = _values(3 * BLOCK_ELEMENTS, dtype)
    chunk = values.view(torch.uint8).numpy().tobytes()
    widened = dtype == torch.bfloat16
    start, at = _values(5 * BLOCK_ELEMENTS + 3, torch.float32), BLOCK_ELEMENTS + 3
    expected = start.clone()
    expected_norms = native.add_measured(
        expected[at : at + values.numel()], values, 0.37, write=write, size=BLOCK_ELEMENTS
    )
    assert expected_norms is not None
    got, norms = start.clone(), (ctypes.c_float * 5)(*[-1.0] * 5)
    assert native.add_measured_chunk(
        got.data_ptr() + 4 * at, chunk, 0.37, write=write, blocks=3, size=BLOCK_ELEMENTS,
        norms=ctypes.addressof(norms) + 4, widened=widened,
    )  # fmt: skip
    assert torch.equal(got, expected)  # nothing beside the stretch moved either
    assert norms[0] == norms[4] == -1.0 and list(norms[1:4]) == expected_norms.tolist()
    alone = (ctypes.c_float * 3)()
    assert native.measure_chunk(chunk, 3, BLOCK_ELEMENTS, ctypes.addressof(alone), widened=widened)
    assert list(alone) == expected_norms.tolist()


def test_a_chunk_that_is_not_its_whole_blocks_is_not_read() -> None:
    chunk = torch.ones(2 * BLOCK_ELEMENTS).numpy().tobytes()
    norms = (ctypes.c_float * 3)(-1.0, -1.0, -1.0)
    for blocks in (1, 3):
        assert not native.measure_chunk(
            chunk, blocks, BLOCK_ELEMENTS, ctypes.addressof(norms), widened=False
        )
    total = torch.zeros(4 * BLOCK_ELEMENTS)
    assert not native.add_measured_chunk(
        total.data_ptr(), chunk, 1.0, write=False, blocks=2, size=BLOCK_ELEMENTS,
        norms=ctypes.addressof(norms), widened=True,  # 16-bit values would be half as many
    )  # fmt: skip
    assert list(norms) == [-1.0] * 3 and not total.any()


@pytest.mark.parametrize("element", [LAYOUT.numel - BLOCK_ELEMENTS, LAYOUT.numel, -1])
def test_a_chunk_past_the_end_of_its_run_adds_nothing(element: int) -> None:
    """(The receiver never offers one: its chunks lie within one run.)"""
    fold = new_fold(UpdateShape(layout=LAYOUT, dtype="float32"))
    before = fold.aggregate.total.clone()
    chunk = torch.ones(2 * BLOCK_ELEMENTS).numpy().tobytes()
    norms = (ctypes.c_float * 2)()
    sums = RoundSums(aggregate=fold.aggregate, shape=UpdateShape(layout=LAYOUT, dtype="float32"))
    assert not sums.add_chunk(element, chunk, 2, ctypes.addressof(norms), alpha=1.0)
    assert torch.equal(fold.aggregate.total, before)


@pytest.mark.parametrize("wire", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("control", [False, True])
def test_the_senders_chunks_measure_as_any_other_cut(
    wire: str, control: bool, calls: Counter[str]
) -> None:
    shape = update_shape(wire, control)
    _, *chunks = sender_chunks("silo-a", wire, control)
    data = b"".join(chunks)
    by_views = UpdateStatistics(shape)
    by_views.consume(memoryview(data))
    assert not calls  # (a view: the path through tensors)
    by_chunks = UpdateStatistics(shape)
    for chunk in chunks:
        by_chunks.consume(chunk)
    assert by_chunks.complete() and by_chunks.norm == by_views.norm
    whole = sum(len(c) % (BLOCK_ELEMENTS * shape.itemsize) == 0 for c in chunks)
    assert calls["measure_chunk"] == (whole if _served(wire) else 0) and whole >= 2


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("value", "reason"), [(math.nan, "non_finite"), (-math.inf, "non_finite"), (2e6, "magnitude")]
)
def test_a_bad_value_in_a_whole_block_chunk_is_refused_naming_its_tensor(
    wire: str, value: float, reason: str, calls: Counter[str]
) -> None:
    _, *chunks = sender_chunks("silo-b", wire, False)
    itemsize = update_shape(wire, False).itemsize
    poisoned = bytearray(chunks[1])  # two whole blocks: elements 65536 to 131071
    bad = torch.tensor([value], dtype=getattr(torch, wire)).view(torch.uint8).numpy().tobytes()
    at = (100_000 - 2 * BLOCK_ELEMENTS) * itemsize  # element 100000, in layer.0.lora_B
    poisoned[at : at + itemsize] = bad
    statistics = UpdateStatistics(update_shape(wire, False))
    statistics.consume(chunks[0])
    with pytest.raises(UpdateRejected) as refused:
        statistics.consume(bytes(poisoned))
    assert refused.value.reason == reason
    assert str(refused.value).startswith(f"{reason}: layer.0.lora_B.weight: ")
    assert calls["measure_chunk"] == (2 if _served(wire) else 0)


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
@pytest.mark.parametrize("control", [False, True])
@pytest.mark.parametrize("arrival", ["in order", "reversed", "interleaved"])
def test_the_senders_chunks_fold_live_as_the_spooled_fold_bit_for_bit(
    wire: str, control: bool, arrival: str, calls: Counter[str], tmp_path: Path
) -> None:
    """In order, every update is folded live from its chunks' bytes; reversed, the last two
    are measured as they arrive and carried by the first, read from their spools into each
    block in the call that adds the first's chunk."""
    shape = update_shape(wire, control)
    fold = new_fold(shape)
    order = NAMES[::-1] if arrival == "reversed" else NAMES

    def upload(silo: str) -> Upload:
        cut = sender_chunks(silo, wire, control)
        return Upload(fold, silo, payload_of(silo, wire, control), tmp_path / silo, cut=cut)

    if arrival == "interleaved":
        interleave([upload(silo) for silo in order])
    else:
        for silo in order:
            interleave([upload(silo)])
    fold.finish()
    made = Counter(calls)  # (the reference's fold from the spools reads them too)
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    if not _served(wire):
        assert not made
        return
    assert made["add_measured_chunk"] > 0
    if arrival == "in order":  # each checked in the pass that adds it, where the CRC folds
        assert made["measure_chunk"] == made["check_chunk"] == made["carrying"] == 0
        assert made["checking"] == (made["add_measured_chunk"] if native.crc_folds() else 0)
    if arrival == "reversed":  # the first in the order carries the two others in each call
        # measured on arrival in the pass that checks them, where the CRC-32 is folded
        lib = native.library()
        on_arrival = "check_chunk" if lib is not None and lib.folds_crc32 else "measure_chunk"
        assert made[on_arrival] > 0 and made["carrying"] > 0
        assert fold.folded_live == 1 and fold.folded_carried == 2 and fold.rebuilds == 0


def test_a_live_fold_the_loops_cannot_add_for_ends_and_its_update_folds_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """(No sums of ours are ever out of the loops' reach: forced here.)"""
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    monkeypatch.setattr(native, "add_measured_chunk", lambda *args, **kwargs: False)
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = new_fold(shape)
    uploads = []
    with caplog.at_level(logging.WARNING, logger="coordinator.aggregation.live"):
        for silo in NAMES:
            cut = sender_chunks(silo, "float32", False)
            payload = payload_of(silo, "float32", False)
            uploads.append(Upload(fold, silo, payload, tmp_path / silo, cut=cut))
            interleave(uploads[-1:])
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    assert "cannot add into this round's sums" in caplog.text
    first = uploads[0].live
    assert first is not None and first.folded == 0 and fold.folded_live == 0


def test_a_carried_spool_cut_short_is_named_and_the_chunk_still_measured(tmp_path: Path) -> None:
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    values = _values(2 * BLOCK_ELEMENTS, torch.float32)
    chunk = values.numpy().tobytes()
    whole, short = tmp_path / "whole.bin", tmp_path / "short.bin"
    whole.write_bytes(_values(4 * BLOCK_ELEMENTS, torch.float32).numpy().tobytes())
    short.write_bytes(whole.read_bytes()[: 5 * BLOCK_ELEMENTS])  # 1.25 blocks of values
    total, norms = torch.zeros(2 * BLOCK_ELEMENTS), (ctypes.c_float * 2)()
    with whole.open("rb") as first, short.open("rb") as second:
        spools = [(first.fileno(), whole), (second.fileno(), short)]
        with pytest.raises(OSError, match=f"spooled update {short} is truncated"):
            native.add_measured_chunk(
                total.data_ptr(), chunk, 1.0, write=True, blocks=2, size=BLOCK_ELEMENTS,
                norms=ctypes.addressof(norms), widened=False, spools=spools, element=0,
                alphas=[1.0, 1.0],
            )  # fmt: skip
    expected = native.block_norms(values, 2)
    assert expected is not None and list(norms) == expected.tolist()


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
def test_a_carried_spool_failing_in_the_chunks_call_ends_the_live_fold_not_the_upload(
    wire: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """b and c wait; a, cut as the agent cuts it, streams in live and carries them until a
    read of their spools fails (a failing disk, injected): a is accepted all the same, and
    the sums rebuilt to exactly the three."""
    shape = update_shape(wire, False)
    fold = new_fold(shape)

    def upload(silo: str) -> Upload:
        cut = sender_chunks(silo, wire, False)
        return Upload(fold, silo, payload_of(silo, wire, False), tmp_path / silo, cut=cut)

    for silo in ("silo-b", "silo-c"):
        interleave([upload(silo)])
    carrier = upload("silo-a")
    steps = iter(carrier)
    next(steps), next(steps)  # the header, and one chunk folded live with b and c
    assert carrier.live is not None and len(carrier.live.carried) == 2
    with monkeypatch.context() as patched:
        failed = failing_spool_reads(patched, lambda reads: len(reads) > 0)
        next(steps)
    for _ in steps:
        pass
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    if _served(wire):  # (else the chunks took the path through tensors, failing alike)
        assert failed == [2 * BLOCK_ELEMENTS]
    assert fold.rebuilds == 1 and fold.folded_live == 0 and fold.folded_carried == 0
