"""Chunked payload streaming: at most 4 MiB a message, SHA-256 of the whole checked before use."""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from shared.errors import PayloadError

# gRPC's default receive limit is 4 MiB per message; a chunk plus its framing must stay below it,
# so payloads of any size travel without raising that limit.
CHUNK_BYTES = 4 * 1024 * 1024 - 64 * 1024
# Receivers measure an update in blocks of this many elements, counted from the start of each
# run of tensors (adapter, control); senders cut data chunks on block boundaries, so that no
# block has to be pieced together from two chunks.
BLOCK_ELEMENTS = 1 << 15


@dataclass(frozen=True)
class PayloadDigest:
    """The announced size and SHA-256 (lower-case hex) of a payload."""

    total_bytes: int
    sha256: str

    @classmethod
    def of(cls, payload: bytes) -> PayloadDigest:
        return cls(total_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())

    @classmethod
    def of_chunks(cls, chunks: Sequence[bytes]) -> PayloadDigest:
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        return cls(total_bytes=sum(map(len, chunks)), sha256=digest.hexdigest())


def iter_chunks(payload: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """A payload's chunks, sliced through a memoryview: the whole payload is never copied
    again."""
    view = memoryview(payload)
    for start in range(0, len(payload), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


def check_digest(received: str, announced: str) -> None:
    if received != announced:
        raise PayloadError(
            f"payload digest mismatch: received sha256 {received[:16]}..., "
            f"announced {announced[:16]}..."
        )


class PayloadBuffer:
    """Receives the chunks of one announced payload into a buffer of exactly its size,
    hashing as they arrive; `finish()` checks the size and the digest (PayloadError)."""

    def __init__(self, *, expected: PayloadDigest, max_bytes: int) -> None:
        if expected.total_bytes > max_bytes:
            raise PayloadError(
                f"announced payload of {expected.total_bytes} bytes exceeds the limit of "
                f"{max_bytes} bytes"
            )
        self._expected = expected
        self._hash = hashlib.sha256()
        # anonymous pages, all mapped up front (one call instead of a fault every 4 KiB:
        # measured 0.9 vs 1.6 s for a 600 MB download) and never cleared twice
        self._memory = (
            mmap.mmap(
                -1,
                expected.total_bytes,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0),
            )
            if expected.total_bytes
            else None
        )
        self._view = memoryview(self._memory) if self._memory is not None else memoryview(b"")
        self.received = 0

    def write(self, chunk: bytes) -> None:
        if len(chunk) > CHUNK_BYTES:
            raise PayloadError(f"chunk of {len(chunk)} bytes exceeds {CHUNK_BYTES} bytes")
        end = self.received + len(chunk)
        if end > self._expected.total_bytes:
            raise PayloadError(
                f"payload longer than announced: more than {self._expected.total_bytes} bytes"
            )
        self._view[self.received : end] = chunk
        self._hash.update(chunk)
        self.received = end

    def finish(self) -> memoryview:
        """The verified payload (writable; tensors decoded from it are views of it)."""
        if self.received != self._expected.total_bytes:
            raise PayloadError(
                f"payload truncated: received {self.received} of "
                f"{self._expected.total_bytes} announced bytes"
            )
        check_digest(self._hash.hexdigest(), self._expected.sha256)
        return self._view


def assemble(expected: PayloadDigest, chunks: Iterable[bytes], *, max_bytes: int) -> memoryview:
    """Collect a payload in memory (the global adapter on the silo side) and verify it."""
    buffer = PayloadBuffer(expected=expected, max_bytes=max_bytes)
    for chunk in chunks:
        buffer.write(chunk)
    return buffer.finish()
