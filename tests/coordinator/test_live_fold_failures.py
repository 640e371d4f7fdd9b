"""Live folds that fail part-way, through the real receiver: refused or late while carrying
waiting updates, a refusal racing the round's close, spools that cannot be read. The sums are
rebuilt to exactly the accepted updates, bit for bit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from coordinator.aggregation import sums as sums_module
from coordinator.aggregation.shape import UpdateShape
from shared.errors import UpdateRejected
from tests.coordinator.live_uploads import (
    LAYOUT,
    NAMES,
    Upload,
    arrive,
    assert_same_sums,
    interleave,
    new_fold,
    payload_of,
    poisoned_payload,
    reference,
    streaming,
)
from tests.helpers import failing_spool_reads


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
@pytest.mark.parametrize("at", [-4, 120_000], ids=["last block", "a whole block"])
def test_an_update_refused_while_carrying_others_leaves_only_them_in_the_sums(
    wire: str, at: int, tmp_path: Path
) -> None:
    """b and c arrive first and wait; a, first in the order, streams in live and carries them
    (their values reach the sums with a's), then is refused: the sums are rebuilt, and b and
    c are folded from their spools."""
    shape = UpdateShape(layout=LAYOUT, dtype=wire)
    fold = new_fold(shape)
    arrive(fold, ["silo-c", "silo-b"], wire, tmp_path)
    poisoned = Upload(fold, "silo-a", poisoned_payload("silo-a", wire, at), tmp_path / "a.bin")
    with pytest.raises(UpdateRejected, match="NaN"):
        interleave([poisoned])
    assert poisoned.live is not None and 0 < poisoned.live.folded < shape.numel
    assert [c.name for c in poisoned.live.carried] == ["silo-b", "silo-c"]
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, ["silo-b", "silo-c"], tmp_path))
    assert fold.rebuilds == 1 and fold.folded_live == 0 and fold.folded_carried == 0


@pytest.mark.parametrize(
    ("accepted", "late", "wire"),
    [(["silo-a"], "silo-b", "float32"), (["silo-b", "silo-c"], "silo-a", "bfloat16")],
    ids=["carrying nothing", "carrying the two after it"],
)
def test_a_round_that_closes_during_a_live_fold_keeps_only_the_accepted_updates(
    accepted: list[str], late: str, wire: str, tmp_path: Path
) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype=wire)
    fold = new_fold(shape)
    arrive(fold, accepted, wire, tmp_path)
    upload, steps = streaming(fold, late, wire, tmp_path)  # (with chunks of those it carries)
    live = upload.live
    waiting = [s for s in accepted if s > late]
    assert live is not None and live.folded > 0 and [c.name for c in live.carried] == waiting
    fold.finish()  # the deadline: the update still streaming in is too late; the accepted
    expected = reference(shape, accepted, tmp_path)  # count, folded again from their spools
    assert_same_sums(fold.aggregate, expected)
    next(steps)  # the stream goes on: nothing more reaches the sums
    assert_same_sums(fold.aggregate, expected)


def test_a_round_that_closes_while_a_refused_live_fold_is_undone_waits_for_it(
    tmp_path: Path,
) -> None:
    """The upload's refusal (abandon, on the event loop) and the round's close (finish, in
    the run loop) at once: b streams in live carrying c, then is refused; its revocation is
    held at its start (where a thread switch may come). The close waits for it, so the sums
    are rebuilt without b and with c."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = new_fold(shape)
    arrive(fold, ["silo-a", "silo-c"], "float32", tmp_path)
    late, _rest = streaming(fold, "silo-b", "float32", tmp_path)
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
    assert_same_sums(fold.aggregate, reference(shape, ["silo-a", "silo-c"], tmp_path))
    assert fold.rebuilds == 1


def test_a_read_error_while_catching_up_ends_the_live_fold_not_the_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """silo-c is granted mid-stream and catches up from its spool; its second read fails (a
    failing disk, injected: one cannot be produced here) after part of it is in the sums.
    The upload goes on and is accepted; the sums are rebuilt and c folded from its spool."""
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    fold = new_fold(shape)
    monkeypatch.setattr(sums_module, "FOLD_BLOCK", 4096)  # several reads per catch-up
    uploads = {
        s: Upload(fold, s, payload_of(s, "float32", False), tmp_path / f"{s}.bin") for s in NAMES
    }
    c_steps = iter(uploads["silo-c"])
    for _ in range(uploads["silo-c"].chunks // 2):  # half of c spooled before it is granted
        next(c_steps)
    interleave([uploads["silo-a"], uploads["silo-b"]])
    with monkeypatch.context() as patched:
        reads = failing_spool_reads(patched, lambda reads: len(reads) == 2)
        next(c_steps)
    assert len(reads) == 2  # the failed read was the last: no live add after it
    for _ in c_steps:  # the rest of c, and its acceptance
        pass
    assert uploads["silo-c"].live is not None and uploads["silo-c"].live.folded < shape.numel
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    assert fold.rebuilds == 1 and fold.folded_live == 0  # (a and b: read again by the rebuild)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_carried_spool_that_cannot_be_read_ends_the_live_fold_not_the_upload(
    dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b and c wait; a streams in live and carries them until a read of c's spool fails (a
    failing disk, injected): a's upload is accepted all the same, and the sums rebuilt.
    (spools are read by the native loop where it serves, else mapped: both fail alike.)"""
    shape = UpdateShape(layout=LAYOUT, dtype=dtype)
    fold = new_fold(shape)
    arrive(fold, ["silo-b", "silo-c"], dtype, tmp_path)
    carrier, steps = streaming(fold, "silo-a", dtype, tmp_path)
    assert carrier.live is not None and len(carrier.live.carried) == 2
    with monkeypatch.context() as patched:  # every carried window after the first fails
        failed = failing_spool_reads(patched, lambda reads: reads[-1] > 0)
        while not any(start > 0 for start in failed):
            next(steps)  # the live fold stops at the failed read, the upload goes on
    for _ in steps:
        pass
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    assert fold.rebuilds == 1 and fold.folded_live == 0 and fold.folded_carried == 0
