"""Chunked payload streaming: at most 4 MiB a message, SHA-256 of the whole checked before use."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from shared.errors import PayloadError

# gRPC's default receive limit is 4 MiB per message; a chunk plus its framing must stay below it,
# so payloads of any size travel without raising that limit.
CHUNK_BYTES = 4 * 1024 * 1024 - 64 * 1024


@dataclass(frozen=True)
class PayloadDigest:
    """The announced size and SHA-256 (lower-case hex) of a payload."""

    total_bytes: int
    sha256: str

    @classmethod
    def of(cls, payload: bytes) -> PayloadDigest:
        return cls(total_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())


def iter_chunks(payload: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Slice a payload into chunks; memoryview avoids copying the whole payload again."""
    view = memoryview(payload)
    for start in range(0, len(payload), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


class PayloadSink:
    """Receives the chunks of one announced payload, hashing as they arrive.

    Bytes go to `out` (a file, so that an upload never needs to sit in memory whole).
    `finish()` checks the size and the digest; any failure raises PayloadError.
    """

    def __init__(self, *, expected: PayloadDigest, out: IO[bytes], max_bytes: int) -> None:
        if expected.total_bytes > max_bytes:
            raise PayloadError(
                f"announced payload of {expected.total_bytes} bytes exceeds the limit of "
                f"{max_bytes} bytes"
            )
        self._expected = expected
        self._out = out
        self._hash = hashlib.sha256()
        self.received = 0

    def write(self, chunk: bytes) -> None:
        if len(chunk) > CHUNK_BYTES:
            raise PayloadError(f"chunk of {len(chunk)} bytes exceeds {CHUNK_BYTES} bytes")
        self.received += len(chunk)
        if self.received > self._expected.total_bytes:
            raise PayloadError(
                f"payload longer than announced: more than {self._expected.total_bytes} bytes"
            )
        self._hash.update(chunk)
        self._out.write(chunk)

    def finish(self) -> None:
        if self.received != self._expected.total_bytes:
            raise PayloadError(
                f"payload truncated: received {self.received} of "
                f"{self._expected.total_bytes} announced bytes"
            )
        digest = self._hash.hexdigest()
        if digest != self._expected.sha256:
            raise PayloadError(
                f"payload digest mismatch: received sha256 {digest[:16]}..., "
                f"announced {self._expected.sha256[:16]}..."
            )


def assemble(expected: PayloadDigest, chunks: Iterable[bytes], *, max_bytes: int) -> bytes:
    """Collect a payload in memory (the global adapter on the silo side) and verify it."""
    buffer = io.BytesIO()
    sink = PayloadSink(expected=expected, out=buffer, max_bytes=max_bytes)
    for chunk in chunks:
        sink.write(chunk)
    sink.finish()
    return buffer.getvalue()
