"""Updates folded live, chunk by chunk as they stream in, through the real receiver: the sums
equal the fold from the spools bit for bit whatever the arrival order and the chunk cuts, and
an update refused or cut off mid-stream leaves nothing of itself in them."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import torch

from coordinator.aggregation import native
from coordinator.aggregation import sums as sums_module
from coordinator.aggregation.fold import AggregationRule
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.sums import RoundSums
from coordinator.flat_adapter import FlatLayout
from coordinator.strategies import RoundAggregate
from shared.errors import PayloadError, UpdateRejected
from shared.payload import CHUNK_BYTES, PayloadDigest
from shared.tensor_codec import TensorLayout
from tests.coordinator.live_uploads import (
    LAYOUT,
    NAMES,
    Upload,
    assert_same_sums,
    interleave,
    new_fold,
    payload_of,
    poisoned_payload,
    reference,
    update_shape,
)


@pytest.mark.parametrize("wire", ["float32", "bfloat16", "float16", "int8"])
@pytest.mark.parametrize("control", [False, True])
@pytest.mark.parametrize("arrival", ["in order", "reversed", "interleaved", "interleaved reversed"])
def test_live_folds_equal_the_spooled_fold_bit_for_bit(
    wire: str, control: bool, arrival: str, tmp_path: Path
) -> None:
    shape = update_shape(wire, control)
    fold = new_fold(shape)
    order = NAMES if "reversed" not in arrival else NAMES[::-1]
    payloads = {s: payload_of(s, wire, control) for s in NAMES}
    if "interleaved" in arrival:
        uploads = [Upload(fold, s, payloads[s], tmp_path / f"{s}.bin") for s in order]
        interleave(uploads)
    else:
        uploads = []
        for silo in order:  # each streams in whole before the next starts
            uploads.append(Upload(fold, silo, payloads[silo], tmp_path / f"{silo}.bin"))
            interleave(uploads[-1:])
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    live = {u.silo: u.live.folded if u.live else 0 for u in uploads}
    # the time each live fold spent adding (the fold phase's metric counts it)
    assert all(u.live.seconds > 0 for u in uploads if u.live is not None and u.live.folded)
    if arrival == "in order":  # every update was next while it streamed: all folded live
        assert live == dict.fromkeys(NAMES, shape.numel)
    if arrival == "reversed":  # only the first in the order was next while streaming
        assert live == {"silo-a": shape.numel, "silo-b": 0, "silo-c": 0}
        # ... and it carried the two waiting after it: the sums were read once for all three
        carrier = uploads[-1].live
        assert carrier is not None and [c.name for c in carrier.carried] == NAMES[1:]
        assert fold.folded_live == 1 and fold.folded_carried == 2 and fold.rebuilds == 0
    if arrival == "interleaved":
        # b (the largest chunks) ends before a; c is granted mid-stream and catches up from
        # its spool before folding the rest of its chunks live
        assert live == {"silo-a": shape.numel, "silo-b": 0, "silo-c": shape.numel}


def test_a_live_fold_carries_no_more_than_the_mapping_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for one waiting update (these are smaller than a chunk): a carries b; c, the
    rest, is folded from its spool after them, and the sums are the same bits."""
    monkeypatch.setattr(sums_module, "MANY_BYTES", LAYOUT.numel * 4)
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = new_fold(shape)
    uploads = []
    for silo in NAMES[::-1]:
        uploads.append(
            Upload(fold, silo, payload_of(silo, "float32", False), tmp_path / f"{silo}.bin")
        )
        interleave(uploads[-1:])
    carrier = uploads[-1].live
    assert carrier is not None and [c.name for c in carrier.carried] == ["silo-b"]
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))


@pytest.mark.parametrize("numel", [1_000, 3_000_000, 12_000_000, 150_000_000])
@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
def test_what_carried_updates_hold_mapped_stays_within_the_mapping_budget(
    numel: int, wire: str
) -> None:
    """However many a live fold carries, each carried spool's chunk stretch plus the pages
    it may keep mapped (SpoolView's hold) add up to no more than the budget; with room to
    spare, the pages are let go less often than every chunk."""
    layout = FlatLayout.from_layout({"w": TensorLayout("w", (numel,), "float32")})
    shape = UpdateShape(layout=layout, dtype=wire)
    sums = RoundSums(
        aggregate=RoundAggregate(total=torch.empty(0), control_total=None, population=1),
        shape=shape,
    )
    for carried in range(1, sums.carried_most + 1):
        assert carried * (sums.carry_hold(carried) + sums.stretch) <= sums.mapped_most
    if numel == 150_000_000:
        assert sums.carry_hold(2) >= 4 * CHUNK_BYTES
        assert sums.carry_hold(8) > 0


@pytest.mark.parametrize("seed", range(4))
def test_uploads_in_threads_fold_the_same_sums(seed: int, tmp_path: Path) -> None:
    """Each upload in its own thread, pausing at random between chunks, as concurrent
    receivers run: grants, catch-ups and folds meet across threads."""
    shape = UpdateShape(layout=LAYOUT, dtype="bfloat16")
    fold = new_fold(shape)
    pauses = random.Random(seed)
    uploads = [
        Upload(fold, s, payload_of(s, "bfloat16", False), tmp_path / f"{s}.bin") for s in NAMES
    ]
    delays = {u.silo: [pauses.uniform(0, 0.004) for _ in range(u.chunks + 1)] for u in uploads}
    errors: list[BaseException] = []

    def stream(upload: Upload) -> None:
        try:
            for _, delay in zip(upload, delays[upload.silo], strict=False):
                time.sleep(delay)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(u,)) for u in uploads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    assert fold.folded_live >= 1 and fold.rebuilds == 0


@pytest.mark.parametrize(
    ("wire", "loops"), [("float32", True), ("float32", False), ("bfloat16", True)]
)
@pytest.mark.parametrize("at", [-4, 120_000], ids=["last block", "a whole block"])
def test_an_update_refused_midway_through_its_live_fold_leaves_nothing_in_the_sums(
    wire: str, loops: bool, at: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A whole block of 16-bit values, or of float32 ones where the native loops serve, is
    added in the pass that measures it, so its NaN reaches the sums before it is refused;
    the last block, and float32 ones measured by ATen, are checked before they are added."""
    if not loops:
        request.getfixturevalue("no_native_loops")
    shape = UpdateShape(layout=LAYOUT, dtype=wire)
    fold = new_fold(shape)
    interleave([Upload(fold, "silo-a", payload_of("silo-a", wire, False), tmp_path / "a.bin")])
    poisoned = Upload(fold, "silo-b", poisoned_payload("silo-b", wire, at), tmp_path / "b.bin")
    with pytest.raises(UpdateRejected, match="NaN"):
        interleave([poisoned])
    assert poisoned.live is not None and 0 < poisoned.live.folded < shape.numel
    fused = (wire == "bfloat16" or native.library() is not None) and at > 0
    assert bool(fold.aggregate.total.isnan().any()) == fused
    # one rebuild is all a silo can cost: no update of this attempt is folded live any more
    late = Upload(fold, "silo-c", payload_of("silo-c", wire, False), tmp_path / "c.bin")
    assert late.live is None
    interleave([late])
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, ["silo-a", "silo-c"], tmp_path))


def test_the_first_update_refused_midway_leaves_the_sums_to_be_written(tmp_path: Path) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = new_fold(shape)
    with pytest.raises(UpdateRejected):
        interleave(
            [Upload(fold, "silo-a", poisoned_payload("silo-a", "float32"), tmp_path / "a.bin")]
        )
    uploads = [
        Upload(fold, s, payload_of(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES[1:]
    ]
    interleave(uploads)
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES[1:], tmp_path))


def test_a_second_stream_of_one_silo_is_never_folded_live_beside_its_first(
    tmp_path: Path,
) -> None:
    """A silo that opens two uploads at once: the first is folded live; the second, which
    ends first and is accepted, takes the first's place, so what the first added goes (the
    first is refused in the end: NaN, or a duplicate at admission)."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = new_fold(shape)
    first = Upload(fold, "silo-a", poisoned_payload("silo-a", "float32"), tmp_path / "a1.bin")
    steps = iter(first)
    next(steps), next(steps), next(steps)  # a whole block measured
    assert first.live is not None and first.live.folded > 0
    second = Upload(fold, "silo-a", payload_of("silo-a", "float32", False), tmp_path / "a2.bin")
    assert second.live is None
    interleave([second])
    with pytest.raises(UpdateRejected):  # the first streams on: nothing more reaches the sums
        for _ in steps:
            pass
    interleave(
        [Upload(fold, s, payload_of(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES[1:]]
    )
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))


def test_a_complete_live_fold_refused_at_its_check_is_rebuilt_out(tmp_path: Path) -> None:
    """Every value added, then the CRC-32 at the end does not match: the update goes."""
    shape = UpdateShape(layout=LAYOUT, dtype="bfloat16")
    fold = new_fold(shape)
    interleave(
        [Upload(fold, "silo-a", payload_of("silo-a", "bfloat16", False), tmp_path / "a.bin")]
    )
    payload = payload_of("silo-b", "bfloat16", False)
    wrong = PayloadDigest(len(payload), crc32=PayloadDigest.of(payload).crc32 ^ 1)  # type: ignore[operator]
    corrupt = Upload(fold, "silo-b", payload, tmp_path / "b.bin", announced=wrong)
    with pytest.raises(PayloadError, match="CRC-32"):
        interleave([corrupt])
    assert corrupt.live is not None and corrupt.live.folded == shape.numel
    interleave(
        [Upload(fold, "silo-c", payload_of("silo-c", "bfloat16", False), tmp_path / "c.bin")]
    )
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, ["silo-a", "silo-c"], tmp_path))
    assert fold.rebuilds == 1


def test_the_stream_accepted_is_the_one_in_the_sums(tmp_path: Path) -> None:
    """A silo's first stream is folded live to its last value but never ends (a stall before
    its trailer); a retry with other values ends and is accepted. The sums hold the retry."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = new_fold(shape)
    other_values = payload_of("silo-c", "float32", False)  # same layout, other values
    first = Upload(fold, "silo-a", other_values, tmp_path / "a1.bin")
    steps = iter(first)
    for _ in range(first.chunks):  # every chunk, but not the end of the stream
        next(steps)
    assert first.live is not None and first.live.folded == shape.numel
    retry = Upload(fold, "silo-a", payload_of("silo-a", "float32", False), tmp_path / "a2.bin")
    interleave([retry])
    fold.abandon(first.live)  # the stalled stream is refused in the end
    interleave(
        [Upload(fold, s, payload_of(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES[1:]]
    )
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))


@pytest.mark.parametrize(
    "rule",
    [
        AggregationRule(clip_norm=1.0),
        AggregationRule(clip_median_factor=2.0),
        AggregationRule(max_weight_share=0.5),
        AggregationRule(aggregator="median"),
    ],
)
def test_rules_that_need_a_whole_update_first_fold_nothing_live(
    rule: AggregationRule, tmp_path: Path
) -> None:
    fold = new_fold(UpdateShape(layout=LAYOUT, dtype="float32"), rule)
    assert fold.offer("silo-a", 1.0) is None
