"""Updates folded live, chunk by chunk as they stream in, through the real receiver: the sums
equal the fold from the spools bit for bit whatever the arrival order and the chunk cuts, and
an update refused or cut off mid-stream leaves nothing of itself in them."""

from __future__ import annotations

import errno
import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from coordinator.aggregation import fold as fold_module
from coordinator.aggregation.fold import AggregationRule, Arrival, RoundFold
from coordinator.aggregation.live import LiveFold
from coordinator.aggregation.receiver import UpdateReceiver, receive_bytes
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.spool import SpoolView
from coordinator.flat_adapter import FlatLayout
from coordinator.strategies import RoundAggregate
from shared.errors import PayloadError, UpdateRejected
from shared.payload import PayloadDigest, iter_chunks
from shared.tensor_codec import CONTROL_PREFIX, encode_state

# Several norm blocks (32768 values) per tensor, and tensors that end inside a block.
SHAPES = {"layer.0.lora_A.weight": (8, 9001), "layer.0.lora_B.weight": (9001, 8), "w": (5,)}
LAYOUT = FlatLayout.of({k: torch.zeros(s) for k, s in SHAPES.items()})
NAMES = ["silo-a", "silo-b", "silo-c"]
FOLD_LOCKS: dict[int, threading.Lock] = {}
WEIGHTS = {"silo-a": 3.0, "silo-b": 11.0, "silo-c": 7.0}
CUTS = {"silo-a": 65_537, "silo-b": 100_003, "silo-c": 33_333}  # chunk bytes, as senders cut


def _payload(silo: str, wire: str, control: bool) -> bytes:
    generator = torch.Generator().manual_seed(NAMES.index(silo))
    state = {k: torch.randn(s, generator=generator) * 0.01 for k, s in SHAPES.items()}
    if control:
        state |= {
            CONTROL_PREFIX + k: torch.randn(s, generator=generator) for k, s in SHAPES.items()
        }
    return encode_state({k: v.to(getattr(torch, wire)) for k, v in state.items()})


def _fold(shape: UpdateShape, rule: AggregationRule | None = None) -> RoundFold:
    control = LAYOUT.zeros() if shape.with_control else None
    # sums that still hold an earlier round's values, as the reused buffers do
    total = torch.full((LAYOUT.numel,), 123.0)
    if control is not None:
        control.fill_(-7.0)
    return RoundFold(
        aggregate=RoundAggregate(total=total, control_total=control, population=5),
        rule=rule or AggregationRule(),
        selected=NAMES,
        shape=shape,
    )


class Upload:
    """One update streaming in: `next(upload)` receives one chunk; exhausted once finished."""

    def __init__(
        self,
        fold: RoundFold,
        silo: str,
        payload: bytes,
        spool: Path,
        announced: PayloadDigest | None = None,
    ) -> None:
        self.fold, self.silo, self.payload, self.path = fold, silo, payload, spool
        self.fold_lock = FOLD_LOCKS.setdefault(id(fold), threading.Lock())
        self.announced = announced or PayloadDigest.of(payload)
        self.chunks = len(list(iter_chunks(payload, CUTS[silo])))
        self.live: LiveFold | None = fold.offer(silo, WEIGHTS[silo])
        self._steps = self._stream()

    def _stream(self) -> Iterator[None]:
        with self.path.open("wb") as spool:
            receiver = UpdateReceiver(
                shape=self.fold._shape,
                announced=self.announced,
                spool=spool,
                path=self.path,
                live=self.live,
            )
            try:
                for chunk in iter_chunks(self.payload, CUTS[self.silo]):
                    receiver.write(chunk)
                    yield
                received = receiver.finish()
            except Exception:
                if self.live is not None:
                    self.fold.abandon(self.live)
                raise
        weight = WEIGHTS[self.silo]
        arrival = Arrival(update=received, weight=weight, num_samples=1, steps=1)
        with self.fold_lock:  # as the coordinator serialises folds
            self.fold.add(self.silo, arrival, live=self.live)

    def __iter__(self) -> Iterator[None]:
        return self._steps


def _reference(shape: UpdateShape, silos: list[str], tmp_path: Path) -> RoundAggregate:
    """The same updates folded from their spools only (received whole, then added)."""
    fold = _fold(shape)
    for silo in silos:
        path = tmp_path / f"reference-{silo}.bin"
        payload = _payload(silo, shape.dtype, shape.with_control)
        received = receive_bytes(payload, shape=shape, path=path)
        fold.add(silo, Arrival(update=received, weight=WEIGHTS[silo], num_samples=1, steps=1))
    fold.finish()
    return fold.aggregate


def _assert_same_sums(got: RoundAggregate, expected: RoundAggregate) -> None:
    assert got.weight_sum == expected.weight_sum
    assert torch.equal(got.total, expected.total)  # bit for bit
    if expected.control_total is not None:
        assert got.control_total is not None
        assert torch.equal(got.control_total, expected.control_total)


def _interleave(uploads: list[Upload]) -> None:
    """One chunk of each upload in turn, as concurrent streams arrive."""
    for _ in itertools.zip_longest(*uploads):
        pass


@pytest.mark.parametrize("wire", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("control", [False, True])
@pytest.mark.parametrize("arrival", ["in order", "reversed", "interleaved", "interleaved reversed"])
def test_live_folds_equal_the_spooled_fold_bit_for_bit(
    wire: str, control: bool, arrival: str, tmp_path: Path
) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype=wire, with_control=control)
    fold = _fold(shape)
    order = NAMES if "reversed" not in arrival else NAMES[::-1]
    payloads = {s: _payload(s, wire, control) for s in NAMES}
    if "interleaved" in arrival:
        uploads = [Upload(fold, s, payloads[s], tmp_path / f"{s}.bin") for s in order]
        _interleave(uploads)
    else:
        uploads = []
        for silo in order:  # each streams in whole before the next starts
            uploads.append(Upload(fold, silo, payloads[silo], tmp_path / f"{silo}.bin"))
            _interleave(uploads[-1:])
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES, tmp_path))
    live = {u.silo: u.live.folded if u.live else 0 for u in uploads}
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
    monkeypatch.setattr(fold_module, "MANY_BYTES", LAYOUT.numel * 4)
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = _fold(shape)
    uploads = []
    for silo in NAMES[::-1]:
        uploads.append(
            Upload(fold, silo, _payload(silo, "float32", False), tmp_path / f"{silo}.bin")
        )
        _interleave(uploads[-1:])
    carrier = uploads[-1].live
    assert carrier is not None and [c.name for c in carrier.carried] == ["silo-b"]
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES, tmp_path))


@pytest.mark.parametrize("seed", range(4))
def test_uploads_in_threads_fold_the_same_sums(seed: int, tmp_path: Path) -> None:
    """Each upload in its own thread, pausing at random between chunks, as concurrent
    receivers run: grants, catch-ups and folds meet across threads."""
    shape = UpdateShape(layout=LAYOUT, dtype="bfloat16")
    fold = _fold(shape)
    pauses = random.Random(seed)
    uploads = [
        Upload(fold, s, _payload(s, "bfloat16", False), tmp_path / f"{s}.bin") for s in NAMES
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
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES, tmp_path))
    assert fold.folded_live >= 1 and fold.rebuilds == 0


def _poisoned(silo: str, wire: str, at: int = -4) -> bytes:
    """A payload with four NaN values from data element `at` (negative: from the end)."""
    payload = bytearray(_payload(silo, wire, False))
    itemsize = torch.empty(0, dtype=getattr(torch, wire)).element_size()
    start = len(payload) - LAYOUT.numel * itemsize + (at % LAYOUT.numel) * itemsize
    nan = torch.full((4,), float("nan"), dtype=getattr(torch, wire))
    raw = nan.view(torch.uint8).numpy().tobytes()
    payload[start : start + len(raw)] = raw
    return bytes(payload)


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
@pytest.mark.parametrize("at", [-4, 120_000], ids=["last block", "a whole block"])
def test_an_update_refused_midway_through_its_live_fold_leaves_nothing_in_the_sums(
    wire: str, at: int, tmp_path: Path
) -> None:
    """A whole block of 16-bit values is added in the pass that measures it, so its NaN
    reaches the sums before it is refused; the last block is checked before it is added."""
    shape = UpdateShape(layout=LAYOUT, dtype=wire)
    fold = _fold(shape)
    _interleave([Upload(fold, "silo-a", _payload("silo-a", wire, False), tmp_path / "a.bin")])
    poisoned = Upload(fold, "silo-b", _poisoned("silo-b", wire, at), tmp_path / "b.bin")
    with pytest.raises(UpdateRejected, match="NaN"):
        _interleave([poisoned])
    assert poisoned.live is not None and 0 < poisoned.live.folded < shape.numel
    fused = wire == "bfloat16" and at > 0
    assert bool(fold.aggregate.total.isnan().any()) == fused
    # one rebuild is all a silo can cost: no update of this attempt is folded live any more
    late = Upload(fold, "silo-c", _payload("silo-c", wire, False), tmp_path / "c.bin")
    assert late.live is None
    _interleave([late])
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, ["silo-a", "silo-c"], tmp_path))


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
@pytest.mark.parametrize("at", [-4, 120_000], ids=["last block", "a whole block"])
def test_an_update_refused_while_carrying_others_leaves_only_them_in_the_sums(
    wire: str, at: int, tmp_path: Path
) -> None:
    """b and c arrive first and wait; a, first in the order, streams in live and carries them
    (their values reach the sums with a's), then is refused: the sums are rebuilt, and b and
    c are folded from their spools."""
    shape = UpdateShape(layout=LAYOUT, dtype=wire)
    fold = _fold(shape)
    for silo in ("silo-c", "silo-b"):
        _interleave([Upload(fold, silo, _payload(silo, wire, False), tmp_path / f"{silo}.bin")])
    poisoned = Upload(fold, "silo-a", _poisoned("silo-a", wire, at), tmp_path / "a.bin")
    with pytest.raises(UpdateRejected, match="NaN"):
        _interleave([poisoned])
    assert poisoned.live is not None and 0 < poisoned.live.folded < shape.numel
    assert [c.name for c in poisoned.live.carried] == ["silo-b", "silo-c"]
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, ["silo-b", "silo-c"], tmp_path))
    assert fold.rebuilds == 1 and fold.folded_live == 0 and fold.folded_carried == 0


def test_a_round_that_closes_while_an_update_carries_others_keeps_only_them(
    tmp_path: Path,
) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype="bfloat16")
    fold = _fold(shape)
    for silo in ("silo-b", "silo-c"):
        _interleave(
            [Upload(fold, silo, _payload(silo, "bfloat16", False), tmp_path / f"{silo}.bin")]
        )
    late = Upload(fold, "silo-a", _payload("silo-a", "bfloat16", False), tmp_path / "a.bin")
    steps = iter(late)
    next(steps), next(steps)  # two chunks in the sums, with those of b and c
    assert late.live is not None and late.live.folded > 0 and len(late.live.carried) == 2
    fold.finish()  # the deadline: a is too late; b and c count, folded again from their spools
    expected = _reference(shape, ["silo-b", "silo-c"], tmp_path)
    _assert_same_sums(fold.aggregate, expected)
    next(steps)  # the stream goes on: nothing more reaches the sums
    _assert_same_sums(fold.aggregate, expected)


def test_a_round_that_closes_while_a_refused_live_fold_is_undone_waits_for_it(
    tmp_path: Path,
) -> None:
    """The upload's refusal (abandon, on the event loop) and the round's close (finish, in
    the run loop) at once: b streams in live carrying c, then is refused; its revocation is
    held at its start (where a thread switch may come). The close waits for it, so the sums
    are rebuilt without b and with c."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = _fold(shape)
    for silo in ("silo-a", "silo-c"):
        _interleave(
            [Upload(fold, silo, _payload(silo, "float32", False), tmp_path / f"{silo}.bin")]
        )
    late = Upload(fold, "silo-b", _payload("silo-b", "float32", False), tmp_path / "b.bin")
    steps = iter(late)
    next(steps), next(steps)
    live = late.live
    assert live is not None and live.folded > 0 and [c.name for c in live.carried] == ["silo-c"]
    entered, go = threading.Event(), threading.Event()
    revoke = live.revoke

    def held() -> tuple[int, bool]:
        entered.set()
        assert go.wait(10)
        return revoke()

    live.revoke = held  # type: ignore[method-assign]
    abandoning = threading.Thread(target=fold.abandon, args=(live,))
    abandoning.start()
    assert entered.wait(10)
    closing = threading.Thread(target=fold.finish)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()  # the close waits for the refusal to be undone
    go.set()
    abandoning.join()
    closing.join()
    _assert_same_sums(fold.aggregate, _reference(shape, ["silo-a", "silo-c"], tmp_path))
    assert fold.rebuilds == 1


def test_the_first_update_refused_midway_leaves_the_sums_to_be_written(tmp_path: Path) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = _fold(shape)
    with pytest.raises(UpdateRejected):
        _interleave([Upload(fold, "silo-a", _poisoned("silo-a", "float32"), tmp_path / "a.bin")])
    uploads = [
        Upload(fold, s, _payload(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES[1:]
    ]
    _interleave(uploads)
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES[1:], tmp_path))


def test_a_round_that_closes_during_a_live_fold_leaves_that_update_out(tmp_path: Path) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = _fold(shape)
    _interleave([Upload(fold, "silo-a", _payload("silo-a", "float32", False), tmp_path / "a.bin")])
    late = Upload(fold, "silo-b", _payload("silo-b", "float32", False), tmp_path / "b.bin")
    steps = iter(late)
    next(steps), next(steps)  # two chunks in the sums
    assert late.live is not None and late.live.folded > 0
    fold.finish()  # the deadline: the update still streaming in is too late
    expected = _reference(shape, ["silo-a"], tmp_path)
    _assert_same_sums(fold.aggregate, expected)
    next(steps)  # the stream goes on: nothing more reaches the sums
    _assert_same_sums(fold.aggregate, expected)


def test_a_second_stream_of_one_silo_is_never_folded_live_beside_its_first(
    tmp_path: Path,
) -> None:
    """A silo that opens two uploads at once: the first is folded live; the second, which
    ends first and is accepted, takes the first's place, so what the first added goes (the
    first is refused in the end: NaN, or a duplicate at admission)."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = _fold(shape)
    first = Upload(fold, "silo-a", _poisoned("silo-a", "float32"), tmp_path / "a1.bin")
    steps = iter(first)
    next(steps), next(steps), next(steps)  # a whole block measured
    assert first.live is not None and first.live.folded > 0
    second = Upload(fold, "silo-a", _payload("silo-a", "float32", False), tmp_path / "a2.bin")
    assert second.live is None
    _interleave([second])
    with pytest.raises(UpdateRejected):  # the first streams on: nothing more reaches the sums
        for _ in steps:
            pass
    _interleave(
        [Upload(fold, s, _payload(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES[1:]]
    )
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES, tmp_path))


def test_a_complete_live_fold_refused_at_its_check_is_rebuilt_out(tmp_path: Path) -> None:
    """Every value added, then the CRC-32 at the end does not match: the update goes."""
    shape = UpdateShape(layout=LAYOUT, dtype="bfloat16")
    fold = _fold(shape)
    _interleave([Upload(fold, "silo-a", _payload("silo-a", "bfloat16", False), tmp_path / "a.bin")])
    payload = _payload("silo-b", "bfloat16", False)
    wrong = PayloadDigest(len(payload), crc32=PayloadDigest.of(payload).crc32 ^ 1)  # type: ignore[operator]
    corrupt = Upload(fold, "silo-b", payload, tmp_path / "b.bin", announced=wrong)
    with pytest.raises(PayloadError, match="CRC-32"):
        _interleave([corrupt])
    assert corrupt.live is not None and corrupt.live.folded == shape.numel
    _interleave([Upload(fold, "silo-c", _payload("silo-c", "bfloat16", False), tmp_path / "c.bin")])
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, ["silo-a", "silo-c"], tmp_path))
    assert fold.rebuilds == 1


def test_the_stream_accepted_is_the_one_in_the_sums(tmp_path: Path) -> None:
    """A silo's first stream is folded live to its last value but never ends (a stall before
    its trailer); a retry with other values ends and is accepted. The sums hold the retry."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = _fold(shape)
    other_values = _payload("silo-c", "float32", False)  # same layout, other values
    first = Upload(fold, "silo-a", other_values, tmp_path / "a1.bin")
    steps = iter(first)
    for _ in range(first.chunks):  # every chunk, but not the end of the stream
        next(steps)
    assert first.live is not None and first.live.folded == shape.numel
    retry = Upload(fold, "silo-a", _payload("silo-a", "float32", False), tmp_path / "a2.bin")
    _interleave([retry])
    fold.abandon(first.live)  # the stalled stream is refused in the end
    _interleave(
        [Upload(fold, s, _payload(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES[1:]]
    )
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES, tmp_path))


def test_a_read_error_while_catching_up_ends_the_live_fold_not_the_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """silo-c is granted mid-stream and catches up from its spool; its second read fails (a
    failing disk, injected: one cannot be produced here) after part of it is in the sums.
    The upload goes on and is accepted; the sums are rebuilt and c folded from its spool."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = _fold(shape)
    monkeypatch.setattr(fold_module, "FOLD_BLOCK", 4096)  # several reads per catch-up
    uploads = {
        s: Upload(fold, s, _payload(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES
    }
    c_steps = iter(uploads["silo-c"])
    for _ in range(uploads["silo-c"].chunks // 2):  # half of c spooled before it is granted
        next(c_steps)
    _interleave([uploads["silo-a"], uploads["silo-b"]])
    reads = []
    original = SpoolView.values

    def failing(self: SpoolView, start: int, count: int) -> torch.Tensor:
        reads.append(start)
        if len(reads) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return original(self, start, count)

    monkeypatch.setattr(SpoolView, "values", failing)
    next(c_steps)
    monkeypatch.setattr(SpoolView, "values", original)
    assert len(reads) == 2  # the failed read was the last: no live add after it
    for _ in c_steps:  # the rest of c, and its acceptance
        pass
    assert uploads["silo-c"].live is not None and uploads["silo-c"].live.folded < shape.numel
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES, tmp_path))
    assert fold.rebuilds == 1 and fold.folded_live == 0  # (a and b: read again by the rebuild)


def test_a_carried_spool_that_cannot_be_read_ends_the_live_fold_not_the_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b and c wait; a streams in live and carries them until a read of c's spool fails (a
    failing disk, injected): a's upload is accepted all the same, and the sums rebuilt."""
    shape = UpdateShape(layout=LAYOUT, dtype="bfloat16")
    fold = _fold(shape)
    for silo in ("silo-b", "silo-c"):
        _interleave(
            [Upload(fold, silo, _payload(silo, "bfloat16", False), tmp_path / f"{silo}.bin")]
        )
    carrier = Upload(fold, "silo-a", _payload("silo-a", "bfloat16", False), tmp_path / "a.bin")
    steps = iter(carrier)
    next(steps), next(steps)
    assert carrier.live is not None and len(carrier.live.carried) == 2
    original = SpoolView.values

    def failing(self: SpoolView, start: int, count: int) -> torch.Tensor:
        if self.numel and start > 0:  # (every carried window after the first)
            raise OSError(errno.EIO, "Input/output error")
        return original(self, start, count)

    monkeypatch.setattr(SpoolView, "values", failing)
    next(steps)  # the live fold stops here, the upload goes on
    monkeypatch.setattr(SpoolView, "values", original)
    for _ in steps:
        pass
    fold.finish()
    _assert_same_sums(fold.aggregate, _reference(shape, NAMES, tmp_path))
    assert fold.rebuilds == 1 and fold.folded_live == 0 and fold.folded_carried == 0


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
    fold = _fold(UpdateShape(layout=LAYOUT, dtype="float32"), rule)
    assert fold.offer("silo-a", 1.0) is None
