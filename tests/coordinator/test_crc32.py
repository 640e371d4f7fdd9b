"""The coordinator's payload check: crc32.c's folded CRC-32 gives zlib's values wherever it
serves, and zlib serves wherever it does not (a processor without PCLMULQDQ, no compiler, a
build whose CRC differs)."""

from __future__ import annotations

import ctypes
import logging
import random
import shutil
import zlib
from pathlib import Path

import pytest
import torch

from coordinator.aggregation import native, native_build
from coordinator.aggregation.receiver import UpdateReceiver
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from shared.errors import PayloadError
from shared.payload import PayloadDigest, iter_chunks
from shared.safetensors_stream import StateEncoder

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
def test_a_crc32_that_differs_from_zlibs_is_not_used_and_the_loops_still_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Built with a wrong folding constant (as a compiler or processor that multiplied
    differently might): the check at load turns the CRC off, with a warning naming why, and
    keeps the fold loops."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native_c, crc32_c = native_build.SOURCES
    text = crc32_c.read_text()
    assert "#define K1 0x154442bd4LL" in text
    broken = tmp_path / "crc32.c"
    broken.write_text(text.replace("#define K1 0x154442bd4LL", "#define K1 0x154442bd5LL"))
    monkeypatch.setattr(native_build, "SOURCES", (native_c, broken))
    with caplog.at_level(logging.WARNING):
        lib = native._load()
    assert lib is not None  # the loops serve
    if not lib.crc32_folds():
        pytest.skip("this processor does not fold CRCs (zlib serves)")
    assert not lib.folds_crc32
    assert "native CRC-32 not used: its CRC-32 of 128 bytes differs from zlib's" in caplog.text


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
