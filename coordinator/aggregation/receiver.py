"""Receiving one update: its safetensors header checked as soon as it arrives, its data
spooled to disk, hashed, and measured (norm, largest magnitude, finiteness) in the same pass.

Statistics are taken over fixed blocks of elements, so that they do not depend on how the
sender cut its chunks: the same update always measures the same, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from coordinator.aggregation.shape import WIRE_DTYPES, UpdateShape
from shared.errors import PayloadError, UpdateRejected
from shared.payload import CHUNK_BYTES, PayloadDigest, iter_chunks

# Elements per statistics block: small enough to stay in cache, large enough that per-call
# overhead vanishes.
STATS_BLOCK = 1 << 18
# No LoRA delta comes near this; far below it, float32 running sums cannot overflow.
MAX_ABS_VALUE = 1e6
# Other safetensors codes, named as torch names them in refusals.
_CODE_NAMES = {
    **{code: name for name, code in WIRE_DTYPES.items()},
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}

# Statistics read chunks in place; they never write to them.
warnings.filterwarnings("ignore", message="The given buffer is not writable")


@dataclass(frozen=True)
class ReceivedUpdate:
    """A complete, verified update on disk: its flat data and what it measured."""

    path: Path  # the data section only: numel elements of `dtype`
    dtype: str
    norm: float  # L2 norm of the adapter delta (control tensors excluded)
    max_abs: float
    nbytes: int  # payload bytes received


def _check_header(raw: bytes, shape: UpdateShape) -> None:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise UpdateRejected(reason="malformed", detail=f"safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise UpdateRejected(reason="malformed", detail="safetensors header is not an object")
    header.pop("__metadata__", None)
    expected = shape.expected_header()
    missing = sorted(expected.keys() - header.keys())
    extra = sorted(header.keys() - expected.keys())
    if missing or extra:
        parts = [f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"] if missing else []
        parts += [f"{len(extra)} unexpected tensor(s), e.g. {extra[0][:120]}"] if extra else []
        raise UpdateRejected(reason="layout", detail="; ".join(parts))
    for name, (code, dims, start, end) in expected.items():
        entry = header[name]
        if not isinstance(entry, dict):
            raise UpdateRejected(reason="malformed", detail=f"{name}: not a tensor entry")
        if entry.get("shape") != dims:
            raise UpdateRejected(
                reason="shape", detail=f"{name}: shape {entry.get('shape')!s:.80}, expected {dims}"
            )
        if entry.get("dtype") != code:
            got = _CODE_NAMES.get(str(entry.get("dtype")), str(entry.get("dtype"))[:20])
            raise UpdateRejected(
                reason="dtype", detail=f"{name}: dtype {got}, expected {_CODE_NAMES[code]}"
            )
        if entry.get("data_offsets") != [start, end]:
            raise UpdateRejected(
                reason="layout",
                detail=f"{name}: data at {entry.get('data_offsets')!s:.40}, expected "
                f"[{start}, {end}] (tensors sorted by name, contiguous)",
            )


class UpdateReceiver:
    """Consumes the chunks of one announced update; `finish()` verifies size and digest.

    Everything here runs in a worker thread, one chunk at a time; any failure raises
    PayloadError (transport) or UpdateRejected (content), and the spool is the caller's.
    """

    def __init__(
        self, *, shape: UpdateShape, announced: PayloadDigest, spool: IO[bytes], path: Path
    ) -> None:
        self._shape = shape
        self._announced = announced
        self._spool = spool
        self._path = path
        self._hash = hashlib.sha256()
        self._head = bytearray()  # the 8-byte length and the JSON header, until complete
        self._data_start = -1  # payload offset of the data section, once the header is read
        self._dtype = getattr(torch, shape.dtype)
        self._itemsize = shape.itemsize
        self._pending = bytearray()  # a statistics block split across chunks
        self._element = 0  # data elements measured so far
        self._sumsq = 0.0
        self._max_abs = 0.0
        self.received = 0
        most = shape.numel * self._itemsize + self._max_header() + 8
        if announced.total_bytes > most:
            raise PayloadError(
                f"announced update of {announced.total_bytes} bytes; this run's updates carry "
                f"at most {most} bytes ({shape.dtype} data plus a header)"
            )

    def _max_header(self) -> int:
        """Room for every tensor's entry with a generous name, plus metadata."""
        tensors = len(self._shape.layout.tensors) * (2 if self._shape.with_control else 1)
        return 64 * 1024 + 512 * tensors

    def write(self, chunk: bytes) -> None:
        if len(chunk) > CHUNK_BYTES:
            raise PayloadError(f"chunk of {len(chunk)} bytes exceeds {CHUNK_BYTES} bytes")
        if self.received + len(chunk) > self._announced.total_bytes:
            raise PayloadError(
                f"payload longer than announced: more than {self._announced.total_bytes} bytes"
            )
        self._hash.update(chunk)
        self.received += len(chunk)
        view = memoryview(chunk)
        if self._data_start < 0:
            view = self._read_header(view)
        if len(view):
            self._spool.write(view)
            self._measure(view)

    def _read_header(self, view: memoryview) -> memoryview:
        """Collect the header; return what of `view` is data."""
        need = 8 if len(self._head) < 8 else 8 + struct.unpack("<Q", self._head[:8])[0]
        take = min(len(view), need - len(self._head))
        self._head += view[:take]
        if len(self._head) == 8:
            (length,) = struct.unpack("<Q", self._head)
            if length > self._max_header():
                raise UpdateRejected(
                    reason="malformed", detail=f"safetensors header of {length} bytes"
                )
            return self._read_header(view[take:])
        if len(self._head) == need and need > 8:
            _check_header(bytes(self._head[8:]), self._shape)
            expected = need + self._shape.numel * self._itemsize
            if expected != self._announced.total_bytes:
                raise PayloadError(
                    f"announced {self._announced.total_bytes} bytes, but its header describes "
                    f"{expected}"
                )
            self._data_start = need
        return view[take:]

    def _block_end(self) -> int:
        """Element index where the current statistics block ends (blocks never straddle a
        run: each block is all adapter or all control values)."""
        run = self._shape.run_at(self._element)
        block = (self._element - run.start) // STATS_BLOCK + 1
        return min(run.start + block * STATS_BLOCK, run.start + run.count)

    def _measure(self, view: memoryview) -> None:
        size = self._itemsize
        while len(view):
            if self._element >= self._shape.numel:
                raise PayloadError("more data than the header describes")
            block_bytes = (self._block_end() - self._element) * size - len(self._pending)
            take = min(block_bytes, len(view))
            if not self._pending and take == block_bytes:
                self._block(view[:take])
            else:
                self._pending += view[:take]
                if take == block_bytes:
                    self._block(memoryview(self._pending))
                    self._pending = bytearray()
            view = view[take:]

    def _block(self, data: memoryview) -> None:
        values = torch.frombuffer(data, dtype=self._dtype)
        if self._dtype != torch.float32:
            values = values.float()
        low, high = torch.aminmax(values)
        peak = max(-float(low), float(high))
        if not math.isfinite(peak):
            raise UpdateRejected(reason="non_finite", detail=self._where() + ": NaN or Inf values")
        if peak > MAX_ABS_VALUE:
            raise UpdateRejected(
                reason="magnitude",
                detail=f"{self._where()}: |value| {peak:.3g} above {MAX_ABS_VALUE:g}",
            )
        self._max_abs = max(self._max_abs, peak)
        if not self._shape.run_at(self._element).control:
            self._sumsq += float(torch.dot(values, values))
        self._element += values.numel()

    def _where(self) -> str:
        return self._shape.name_at(self._element)

    def finish(self, trailer_sha256: str = "") -> ReceivedUpdate:
        total = self._announced.total_bytes
        if self.received != total or self._element != self._shape.numel:
            raise PayloadError(f"payload truncated: received {self.received} of {total} bytes")
        announced = self._announced.sha256 or trailer_sha256
        if not announced:
            raise PayloadError("the update carried no SHA-256, neither in its header nor after it")
        digest = self._hash.hexdigest()
        if digest != announced:
            raise PayloadError(
                f"payload digest mismatch: received sha256 {digest[:16]}..., "
                f"announced {announced[:16]}..."
            )
        self._spool.flush()
        return ReceivedUpdate(
            path=self._path,
            dtype=self._shape.dtype,
            norm=math.sqrt(self._sumsq),
            max_abs=self._max_abs,
            nbytes=self.received,
        )


def receive_bytes(payload: bytes, *, shape: UpdateShape, path: Path) -> ReceivedUpdate:
    """Receive a whole update held in memory (benchmarks, tests, tools) exactly as the
    upload path does, chunk by chunk."""
    with path.open("xb") as spool:
        receiver = UpdateReceiver(
            shape=shape, announced=PayloadDigest.of(payload), spool=spool, path=path
        )
        for chunk in iter_chunks(payload):
            receiver.write(chunk)
        return receiver.finish()
