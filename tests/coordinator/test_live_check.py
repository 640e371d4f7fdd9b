"""A chunk folded live is CRC-checked in the pass that adds it (native.add_measured_chunk with
a check): each block's CRC-32 from 0, carried on in order (crc32.c's crc32_combine), the same
register as zlib's and the same sums and norms, bit for bit, as checking, then adding; checked
once even where a carried spool fails in that pass; and refused at the end if a bit flipped."""

from __future__ import annotations

import ctypes
import random
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.aggregation import native
from coordinator.aggregation.live import Carried, LiveFold
from coordinator.aggregation.measure import UpdateStatistics
from coordinator.aggregation.sums import RoundSums
from shared.errors import PayloadError
from shared.payload import BLOCK_ELEMENTS, PayloadCheck, PayloadDigest
from tests.coordinator.live_uploads import (
    NAMES,
    Upload,
    assert_same_sums,
    checked_in_pass,
    interleave,
    new_fold,
    payload_of,
    reference,
    sender_chunks,
    update_shape,
)


def _values(count: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(count, generator=generator)  # over many magnitudes, so that a lane's
    values *= torch.exp2(torch.randint(-20, 20, (count,), generator=generator).float())
    return values.to(dtype)  # order of additions shows in the norms' last bits


def test_blocks_crcs_carried_on_in_order_give_zlibs_crc_of_the_whole() -> None:
    lib = native.library()
    if lib is None:
        pytest.skip("the native library is not built here")
    generator = random.Random(6)
    for length in (0, 1, 3, 64, 4096 + 7, 1 << 17, (1 << 22) + 5):
        before, after = generator.randbytes(generator.randrange(100)), generator.randbytes(length)
        combined = lib.crc32_combine(
            zlib.crc32(before), zlib.crc32(after), lib.crc32_shift(len(after))
        )
        assert combined == zlib.crc32(before + after), length


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("write", [False, True])
@pytest.mark.parametrize("carried", [0, 2])
@pytest.mark.parametrize("team", ["free", "held"])
def test_a_chunk_checked_in_its_adding_pass_adds_measures_and_checks_as_apart(
    dtype: torch.dtype, write: bool, carried: int, team: str, tmp_path: Path
) -> None:
    """On all of torch's threads, or on the caller's alone (another upload's loop holds the
    others), with and without spooled updates carried into each block."""
    widened = dtype == torch.bfloat16
    if not checked_in_pass("bfloat16" if widened else "float32"):
        pytest.skip("the native loops or their CRC-32 do not serve here")
    blocks, size = 3, BLOCK_ELEMENTS + 37  # several check tiles, and a short last one
    chunk = _values(blocks * size, dtype, seed=1).view(torch.uint8).numpy().tobytes()
    paths = []
    for j in range(carried):
        paths.append(tmp_path / f"carried-{j}.bin")
        spooled = _values(blocks * size + 9, dtype, seed=10 + j)
        paths[-1].write_bytes(spooled.view(torch.uint8).numpy().tobytes())
    start = _values(blocks * size, torch.float32, seed=2)
    results = []
    for check in (None, PayloadCheck(crc32=native.crc32)):
        total, norms = start.clone(), (ctypes.c_float * blocks)()
        files = [path.open("rb") for path in paths]
        if team == "held":
            assert native._team.acquire(blocking=False)
        try:
            assert native.add_measured_chunk(
                total.data_ptr(), chunk, 0.37, write=write, blocks=blocks, size=size,
                norms=ctypes.addressof(norms), widened=widened,
                spools=[(f.fileno(), p) for f, p in zip(files, paths, strict=True)],
                element=9, alphas=[0.5, -3.0][:carried], check=check,
            )  # fmt: skip
        finally:
            if team == "held":
                native._team.release()
            for file in files:
                file.close()
        results.append((total, bytes(norms), check))
    (apart, apart_norms, _), (together, together_norms, check) = results
    assert torch.equal(together, apart) and together_norms == apart_norms
    assert check is not None and check.crc32 == zlib.crc32(chunk) and check.received == len(chunk)
    assert check.seconds > 0


def test_a_carried_spool_cut_short_in_the_adding_pass_leaves_the_chunk_checked(
    tmp_path: Path,
) -> None:
    """The spool's read fails inside the pass: the chunk is checked all the same (every block
    is still added and checked), and the file named."""
    if not checked_in_pass():
        pytest.skip("the native loops or their CRC-32 do not serve here")
    chunk = _values(2 * BLOCK_ELEMENTS, torch.float32, seed=3).numpy().tobytes()
    short = tmp_path / "short.bin"
    short.write_bytes(chunk[: 5 * BLOCK_ELEMENTS])  # 1.25 blocks of values
    total, norms = torch.zeros(2 * BLOCK_ELEMENTS), (ctypes.c_float * 2)()
    check = PayloadCheck(crc32=native.crc32)
    check.update(b"header")
    with short.open("rb") as file, pytest.raises(OSError, match=f"{short} is truncated"):
        native.add_measured_chunk(
            total.data_ptr(), chunk, 1.0, write=True, blocks=2, size=BLOCK_ELEMENTS,
            norms=ctypes.addressof(norms), widened=False, spools=[(file.fileno(), short)],
            alphas=[1.0], check=check,
        )  # fmt: skip
    assert check.crc32 == zlib.crc32(b"header" + chunk)
    assert check.received == len(b"header" + chunk)


def test_a_live_fold_ended_by_a_spool_cut_short_checks_each_chunk_once(tmp_path: Path) -> None:
    """b waits, accepted, and its spool is then cut short (a disk that lost its end); a
    streams in live and carries b until that read fails: the live fold ends, and a's every
    byte is checked exactly once, its norm as measured alone."""
    if not checked_in_pass():
        pytest.skip("the native loops or their CRC-32 do not serve here")
    shape = update_shape("float32", False)
    _, *b_chunks = sender_chunks("silo-b", "float32", False)
    b_path = tmp_path / "silo-b.bin"
    b_path.write_bytes(b"".join(b_chunks)[: 3 * BLOCK_ELEMENTS * 4])
    _, *chunks = sender_chunks("silo-a", "float32", False)
    sums = RoundSums(aggregate=new_fold(shape).aggregate, shape=shape)
    waiting = [Carried(name="silo-b", path=b_path, alpha=11.0, token=object())]
    live = LiveFold(sums, "silo-a", 3.0, waiting=lambda silo: waiting)
    live.grant()
    measured, alone = UpdateStatistics(shape, sink=live), UpdateStatistics(shape)
    check = PayloadCheck(crc32=native.crc32)
    with (tmp_path / "silo-a.bin").open("wb") as spool:
        for chunk in chunks:
            live.resume(measured.element, spool, tmp_path / "silo-a.bin")
            measured.consume(chunk, check)
            alone.consume(chunk)
            spool.write(chunk)
    data = b"".join(chunks)
    check.verify(PayloadDigest(len(data), crc32=zlib.crc32(data)))
    assert measured.norm == alone.norm and measured.complete()
    assert not live.adding and live.folded == 2 * BLOCK_ELEMENTS  # its first chunk's call failed
    assert live.revoke() == (2 * BLOCK_ELEMENTS, True)


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
def test_a_flipped_bit_in_a_chunk_folded_live_is_refused_and_the_sums_rebuilt(
    wire: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bit of a's second chunk flips after the silo announced its check (a lowest bit:
    only the check can tell): a is refused at its end, and the round's sums are b's and c's
    alone."""
    calls: Counter[str] = Counter()
    fused = native.add_measured_chunk

    def counting(*args: Any, check: PayloadCheck | None = None, **kwargs: Any) -> bool:
        calls["checking" if check is not None else "apart"] += 1
        return fused(*args, check=check, **kwargs)

    checked_in_pass(wire)  # the loops' checks run before counting
    monkeypatch.setattr(native, "add_measured_chunk", counting)
    shape = update_shape(wire, False)
    fold = new_fold(shape)
    cut = sender_chunks("silo-a", wire, False)
    flipped = bytearray(cut[2])  # its second chunk of data, of whole blocks
    flipped[1000] ^= 0x01
    cut[2] = bytes(flipped)
    payload = payload_of("silo-a", wire, False)
    announced = PayloadDigest.of(payload)
    upload = Upload(fold, "silo-a", b"".join(cut), tmp_path / "silo-a", announced, cut=cut)
    with pytest.raises(PayloadError, match="payload check failed"):
        interleave([upload])
    assert upload.live is not None and calls["checking" if checked_in_pass(wire) else "apart"] == 2
    for silo in NAMES[1:]:
        cut = sender_chunks(silo, wire, False)
        interleave([Upload(fold, silo, payload_of(silo, wire, False), tmp_path / silo, cut=cut)])
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES[1:], tmp_path))


def test_where_the_crc_does_not_fold_a_live_chunk_is_checked_first_then_added(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """(A processor without PCLMULQDQ, or a build whose check failed: zlib's CRC, forced here.)
    The same sums and the same check as where it folds."""
    lib = native.library()
    if lib is None:
        pytest.skip("the native loops are not built here")
    monkeypatch.setattr(lib, "folds_crc32", False)
    seen: list[object] = []
    fused = native.add_measured_chunk

    def spying(*args: Any, check: PayloadCheck | None = None, **kwargs: Any) -> bool:
        seen.append(check)
        return fused(*args, check=check, **kwargs)

    monkeypatch.setattr(native, "add_measured_chunk", spying)
    shape = update_shape("float32", False)
    fold = new_fold(shape)
    for silo in NAMES:
        cut = sender_chunks(silo, "float32", False)
        interleave(
            [Upload(fold, silo, payload_of(silo, "float32", False), tmp_path / silo, cut=cut)]
        )
    fold.finish()
    assert_same_sums(fold.aggregate, reference(shape, NAMES, tmp_path))
    assert seen and not any(seen) and fold.folded_live == len(NAMES)
