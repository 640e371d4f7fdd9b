"""Chunked payload streaming: at most 4 MiB a message, the whole checked (CRC-32) before use."""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from shared.errors import PayloadError
from shared.wire.v1 import federation_pb2 as pb

# gRPC's default receive limit is 4 MiB per message; a chunk plus its framing must stay below it,
# so payloads of any size travel without raising that limit.
CHUNK_BYTES = 4 * 1024 * 1024 - 64 * 1024
# Receivers measure an update in blocks of this many elements, counted from the start of each
# run of tensors (adapter, control); senders cut data chunks on block boundaries, so that no
# block has to be pieced together from two chunks.
BLOCK_ELEMENTS = 1 << 15

# zlib.crc32's signature: (bytes, CRC-32 of the bytes before) -> CRC-32 of them all. The
# coordinator passes a faster one of the same values (coordinator/aggregation/native.py).
Crc32 = Callable[[bytes | memoryview, int], int]


@dataclass(frozen=True)
class PayloadDigest:
    """The announced size and check of a payload: its CRC-32 (what this version announces;
    mutual TLS already authenticates the bytes, and a CRC costs a quarter of a SHA-256 per
    byte), or the lower-case hex SHA-256 a sender announced instead."""

    total_bytes: int
    crc32: int | None = None
    sha256: str = ""

    @classmethod
    def of(cls, payload: bytes, crc32: Crc32 = zlib.crc32) -> PayloadDigest:
        return cls(total_bytes=len(payload), crc32=crc32(payload, 0))

    @classmethod
    def from_header(cls, header: pb.PayloadHeader) -> PayloadDigest:
        crc32 = header.crc32 if header.HasField("crc32") else None
        return cls(total_bytes=header.total_bytes, crc32=crc32, sha256=header.sha256)

    def to_header(self) -> pb.PayloadHeader:
        return pb.PayloadHeader(total_bytes=self.total_bytes, crc32=self.crc32, sha256=self.sha256)

    @property
    def checked(self) -> bool:
        """Whether a check is announced (a streamed update announces it in its trailer)."""
        return self.crc32 is not None or bool(self.sha256)


class PayloadCheck:
    """The running check of the bytes that pass: CRC-32 (by `crc32`), and SHA-256 only when
    `sha256`."""

    def __init__(self, *, sha256: bool = False, crc32: Crc32 = zlib.crc32) -> None:
        self._crc32 = crc32
        self.crc32 = 0
        self.received = 0
        self.seconds = 0.0  # spent checking: transport, told apart from the work on the bytes
        self._sha256 = hashlib.sha256() if sha256 else None

    def update(self, chunk: bytes | memoryview) -> None:
        started = time.perf_counter()
        self.crc32 = self._crc32(chunk, self.crc32)
        self.received += len(chunk)
        if self._sha256 is not None:
            self._sha256.update(chunk)
        self.seconds += time.perf_counter() - started

    @property
    def crc_only(self) -> bool:
        """Whether the CRC-32 is the whole check (bytes may then be checked elsewhere, in the
        pass that reads them for something else: `checked`)."""
        return self._sha256 is None

    def checked(self, crc32: int, nbytes: int, seconds: float) -> None:
        """Record `nbytes` more bytes checked elsewhere, the CRC-32 carried on from this
        check's (so far) to `crc32` in `seconds`. CRC-only checks only."""
        if self._sha256 is not None:
            raise ValueError("a SHA-256 check must see the bytes (update)")
        self.crc32 = crc32
        self.received += nbytes
        self.seconds += seconds

    def verify(self, announced: PayloadDigest) -> None:
        """PayloadError unless the bytes seen match the announced size and check."""
        if self.received != announced.total_bytes:
            raise PayloadError(
                f"payload truncated: received {self.received} of {announced.total_bytes} "
                "announced bytes"
            )
        if announced.crc32 is not None:
            if self.crc32 != announced.crc32:
                raise PayloadError(
                    f"payload check failed: received CRC-32 {self.crc32:08x}, announced "
                    f"{announced.crc32:08x}"
                )
        elif announced.sha256 and self._sha256 is not None:
            received = self._sha256.hexdigest()
            if received != announced.sha256:
                raise PayloadError(
                    f"payload check failed: received SHA-256 {received[:16]}..., announced "
                    f"{announced.sha256[:16]}..."
                )
        else:
            raise PayloadError("the payload announced no check (CRC-32 or SHA-256)")


def iter_chunks(payload: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """A payload's chunks, sliced through a memoryview: the whole payload is never copied
    again."""
    view = memoryview(payload)
    for start in range(0, len(payload), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


def _check_announced(expected: PayloadDigest, max_bytes: int) -> None:
    if expected.total_bytes > max_bytes:
        raise PayloadError(
            f"announced payload of {expected.total_bytes} bytes exceeds the limit of "
            f"{max_bytes} bytes"
        )


def _check_chunk(chunk: bytes, received: int, expected: PayloadDigest) -> None:
    if len(chunk) > CHUNK_BYTES:
        raise PayloadError(f"chunk of {len(chunk)} bytes exceeds {CHUNK_BYTES} bytes")
    if received + len(chunk) > expected.total_bytes:
        raise PayloadError(f"payload longer than announced: more than {expected.total_bytes} bytes")


def receive_chunks(
    expected: PayloadDigest, chunks: Iterable[bytes], *, max_bytes: int
) -> list[bytes]:
    """The chunks of a payload as they arrived, checked against `expected` (PayloadError):
    nothing is copied, and shared.safetensors_stream.decode_chunks reads tensors from them."""
    _check_announced(expected, max_bytes)
    check = PayloadCheck(sha256=expected.crc32 is None)
    kept = []
    for chunk in chunks:
        _check_chunk(chunk, check.received, expected)
        check.update(chunk)
        kept.append(chunk)
    check.verify(expected)
    return kept
