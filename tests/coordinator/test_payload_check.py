"""The coordinator's payload check: crc32.c's folded CRC-32 gives zlib's values wherever it
serves, and zlib serves wherever it does not (a processor without PCLMULQDQ, no compiler, a
build whose CRC differs); a chunk measured on arrival is checked in the pass that measures it,
with the same check and the same norms, bit for bit, as checked and measured one after the
other."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import random
import shutil
import zlib
from pathlib import Path

import pytest
import torch

from coordinator.aggregation import native, native_build
from coordinator.aggregation.measure import UpdateStatistics
from coordinator.aggregation.receiver import UpdateReceiver
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from shared.errors import PayloadError, UpdateRejected
from shared.payload import BLOCK_ELEMENTS, PayloadCheck, PayloadDigest, iter_chunks
from shared.safetensors_stream import StateEncoder
from tests.coordinator.live_uploads import (
    checked_in_pass,
    payload_of,
    sender_chunks,
    update_shape,
)

HAS_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None
LENGTHS = [*range(0, 300), 1023, 1024, 1025, 4096 + 48, 65536 + 15, (1 << 20) + 13]


def test_it_gives_zlibs_crc32_for_every_length_and_register() -> None:
    """Lengths through every path (bit by bit, the four-way fold, the 16-byte fold, a tail),
    from registers carried over from bytes before."""
    generator = random.Random(1)
    data = generator.randbytes(max(LENGTHS) + 16)
    for length in LENGTHS:
        before = generator.getrandbits(32)
        piece = data[3 : 3 + length]
        assert native.crc32(piece, before) == zlib.crc32(piece, before), length
    assert native.crc32(data) == zlib.crc32(data)  # the register starts at 0


def test_a_payload_checked_in_pieces_gives_the_crc32_of_the_whole() -> None:
    data = random.Random(2).randbytes(3 * 4096 + 77)
    value = 0
    for piece in iter_chunks(data, chunk_bytes=4096 + 5):
        value = native.crc32(piece, value)
    assert value == zlib.crc32(data)


@pytest.mark.skipif(native.library() is None, reason="the native library is not built here")
def test_any_alignment_of_the_bytes_gives_the_same_crc32() -> None:
    """The folding loop loads 16 bytes at any address, not only at aligned ones; and where the
    processor folds, the folding loop is what serves (its check at load passed)."""
    lib = native.library()
    assert lib is not None
    if not lib.crc32_folds():
        pytest.skip("this processor does not fold CRCs (zlib serves)")
    assert lib.folds_crc32
    data = random.Random(3).randbytes(4096 + 100)
    buffer = ctypes.create_string_buffer(data)
    for offset in range(16):
        piece = data[offset : offset + 4096 + 17]
        address = ctypes.addressof(buffer) + offset
        assert lib.crc32_update(7, address, len(piece)) == zlib.crc32(piece, 7), offset


def test_views_and_processes_without_the_loops_take_zlib() -> None:
    """Anything but a bytes object (a memoryview of a header cut short, a bytearray) and any
    process without the native library is checked by zlib, with the same values."""
    data = random.Random(4).randbytes(5000)
    for piece in (memoryview(data)[1:], bytearray(data)):
        assert native.crc32(piece, 9) == zlib.crc32(piece, 9)
    with native.unavailable():
        assert native.crc32(data, 9) == zlib.crc32(data, 9)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize(
    ("source", "right", "wrong", "why"),
    [
        (
            1,
            "#define K1 0x154442bd4LL",
            "#define K1 0x154442bd5LL",
            "its CRC-32 of 128 bytes differs from zlib's",
        ),
        (
            0,
            "(to - from) * (int64_t)itemsize);",
            "(to - from - 1) * (int64_t)itemsize);",
            "its checking and measuring in one pass differ from the two apart",
        ),
        (
            0,
            "crc32_shift(size * itemsize)",
            "crc32_shift(size * itemsize - 1)",
            "its checking and adding in one pass differ from the two apart",
        ),
    ],
)
def test_a_payload_check_that_differs_is_not_used_and_the_loops_still_are(
    source: int,
    right: str,
    wrong: str,
    why: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Built with a wrong folding constant (as a compiler or processor that multiplied
    differently might), a check-and-measure pass that skips a byte per tile, or a
    check-and-add pass that carries its blocks' CRCs on by the wrong length: the check at
    load turns the CRC (and those passes) off, with a warning naming why, and keeps the fold
    loops."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    sources = list(native_build.SOURCES)
    text = sources[source].read_text()
    assert right in text
    broken = tmp_path / sources[source].name
    broken.write_text(text.replace(right, wrong))
    sources[source] = broken
    monkeypatch.setattr(native_build, "SOURCES", tuple(sources))
    with caplog.at_level(logging.WARNING):
        lib = native._load()
    assert lib is not None  # the loops serve
    if not lib.crc32_folds():
        pytest.skip("this processor does not fold CRCs (zlib serves)")
    assert not lib.folds_crc32
    assert f"native CRC-32 not used: {why}" in caplog.text


def test_the_receiver_refuses_a_payload_whose_crc32_does_not_match(tmp_path: Path) -> None:
    """One flipped bit in a chunk of data (a lowest bit: the value at most doubles, so only
    the check can find it), as the native check sees it: refused at the end."""
    delta = {"w": torch.randn(3 * 4096 + 5, generator=torch.Generator().manual_seed(5))}
    encoder = StateEncoder(delta, dtype=torch.float32)
    payload = b"".join(encoder.chunks(chunk_bytes=4096, block=1024))
    shape = UpdateShape(layout=FlatLayout.of(delta), dtype="float32")
    announced = PayloadDigest.of(payload)
    flipped = bytearray(payload)
    flipped[-100] ^= 0x01
    with (tmp_path / "spool").open("xb") as spool:
        receiver = UpdateReceiver(
            shape=shape, announced=announced, spool=spool, path=tmp_path / "spool"
        )
        for chunk in iter_chunks(bytes(flipped), chunk_bytes=4096 * 4):
            receiver.write(chunk)
        with pytest.raises(PayloadError, match="payload check failed: received CRC-32"):
            receiver.finish()


@pytest.mark.parametrize("widened", [False, True])
@pytest.mark.parametrize("size", [BLOCK_ELEMENTS, 4096 + 63, 37])
def test_a_chunk_checked_in_its_measuring_pass_has_zlibs_crc32_and_the_same_norms(
    widened: bool, size: int
) -> None:
    """Blocks of several check tiles with a short last one, and blocks shorter than a lane
    row: each block's norm is block_norms' bit for bit, the register carried on as zlib's."""
    if not checked_in_pass():
        pytest.skip("the native loops or their CRC-32 do not serve here")
    dtype = torch.bfloat16 if widened else torch.float32
    generator = torch.Generator().manual_seed(size)
    values = torch.randn(3 * size, generator=generator)  # over many magnitudes: each lane's
    values *= torch.exp2(torch.randint(-20, 20, (3 * size,), generator=generator).float())
    values = values.to(dtype)  # order of additions shows in the norms' last bits
    chunk = values.view(torch.uint8).numpy().tobytes()
    alone, both = (ctypes.c_float * 3)(), (ctypes.c_float * 3)()
    assert native.measure_chunk(chunk, 3, size, ctypes.addressof(alone), widened=widened)
    checked = native.check_chunk(
        chunk, 3, size, ctypes.addressof(both), widened=widened, crc=0x1234ABCD
    )
    assert checked is not None
    assert checked[0] == zlib.crc32(chunk, 0x1234ABCD)
    assert bytes(both) == bytes(alone)
    short = (ctypes.c_float * 3)()
    cut = chunk[:-2]
    assert native.check_chunk(cut, 3, size, ctypes.addressof(short), widened=widened, crc=0) is None
    assert bytes(short) == bytes(3 * 4)  # nothing written


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
@pytest.mark.parametrize("control", [False, True])
def test_the_senders_chunks_are_checked_in_the_pass_that_measures_them(
    wire: str, control: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every byte of the data section checked once, in order, the whole-block chunks in
    their measuring pass: the same CRC-32 and the same norm as checking, then measuring."""
    checked_in_pass(wire)  # the loops' checks run before counting
    calls: list[int] = []
    check_chunk = native.check_chunk
    monkeypatch.setattr(
        native, "check_chunk", lambda *a, **k: calls.append(1) or check_chunk(*a, **k)
    )
    _, *chunks = sender_chunks("silo-a", wire, control)
    shape = update_shape(wire, control)
    apart, together = UpdateStatistics(shape), UpdateStatistics(shape)
    check = PayloadCheck(crc32=native.crc32)
    for chunk in chunks:
        apart.consume(chunk)
        together.consume(chunk, check)
    data = b"".join(chunks)
    assert check.crc32 == zlib.crc32(data) and check.received == len(data)
    assert together.norm == apart.norm and together.complete()
    whole = sum(1 for c in chunks if len(c) == 2 * BLOCK_ELEMENTS * shape.itemsize)
    assert len(calls) == (whole if checked_in_pass(wire) else 0) and whole >= 2


def test_a_sha256_check_sees_every_byte_and_measuring_is_unchanged() -> None:
    """A sender that announced a SHA-256 (no CRC-32): its chunks are hashed, then measured."""
    _, *chunks = sender_chunks("silo-b", "float32", False)
    statistics = UpdateStatistics(update_shape("float32", False))
    check = PayloadCheck(sha256=True, crc32=native.crc32)
    for chunk in chunks:
        statistics.consume(chunk, check)
    data = b"".join(chunks)
    check.verify(PayloadDigest(len(data), sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(ValueError, match="SHA-256"):
        check.checked(0, 1, 0.0)


@pytest.mark.parametrize("value", [math.nan, 2e6])
def test_a_bad_value_checked_in_the_measuring_pass_is_refused_naming_its_tensor(
    value: float,
) -> None:
    _, *chunks = sender_chunks("silo-b", "float32", False)
    poisoned = bytearray(chunks[1])  # two whole blocks: elements 65536 to 131071
    at = (100_000 - 2 * BLOCK_ELEMENTS) * 4  # element 100000, in layer.0.lora_B
    poisoned[at : at + 4] = torch.tensor([value]).numpy().tobytes()
    statistics = UpdateStatistics(update_shape("float32", False))
    check = PayloadCheck(crc32=native.crc32)
    statistics.consume(chunks[0], check)
    with pytest.raises(UpdateRejected, match=r"layer\.0\.lora_B\.weight: "):
        statistics.consume(bytes(poisoned), check)


def test_an_upload_checked_as_it_is_measured_is_received_whole(tmp_path: Path) -> None:
    """Through the receiver, as an upload arrives: accepted, and its spool holds the payload's
    data section."""
    payload = payload_of("silo-c", "float32", False)
    shape = update_shape("float32", False)
    with (tmp_path / "spool").open("xb") as spool:
        receiver = UpdateReceiver(
            shape=shape, announced=PayloadDigest.of(payload), spool=spool, path=tmp_path / "spool"
        )
        for chunk in sender_chunks("silo-c", "float32", False):
            receiver.write(chunk)
        received = receiver.finish()
    assert received.nbytes == len(payload)
    assert (tmp_path / "spool").read_bytes() == payload[-shape.wire_data_bytes :]
