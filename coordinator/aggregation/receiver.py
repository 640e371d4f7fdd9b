"""Receiving one update: its safetensors header checked as soon as it arrives, its data
checked (CRC-32), decoded if it travels as int8 codes, measured (norm, finiteness, magnitude
bound) and spooled chunk by chunk."""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from coordinator.aggregation import native
from coordinator.aggregation.decoder import CodeDecoder
from coordinator.aggregation.live import LiveFold
from coordinator.aggregation.measure import UpdateStatistics
from coordinator.aggregation.shape import FLOAT_WIRE_CODES, UpdateShape
from shared.errors import PayloadError, UpdateRejected
from shared.payload import CHUNK_BYTES, PayloadCheck, PayloadDigest, iter_chunks
from shared.quantization import ABSMAX, CODE_MAP

# Other safetensors codes, named as torch names them in refusals.
_CODE_NAMES = {
    **{code: name for name, code in FLOAT_WIRE_CODES.items()},
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
    nbytes: int  # payload bytes received


def _check_header(raw: bytes, shape: UpdateShape) -> None:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise UpdateRejected(reason="malformed", detail=f"safetensors header: {exc}") from None
    except RecursionError:
        detail = "safetensors header nested too deeply"
        raise UpdateRejected(reason="malformed", detail=detail) from None
    if not isinstance(header, dict):
        raise UpdateRejected(reason="malformed", detail="safetensors header is not an object")
    header.pop("__metadata__", None)
    if shape.quantized and ABSMAX not in header:
        raise UpdateRejected(
            reason="dtype",
            detail=f"this run's updates travel as int8 codes, {ABSMAX} and {CODE_MAP} first; "
            "upgrade the silo agent",
        )
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
    """Consumes the chunks of one announced update; `finish()` verifies its size and check.

    Everything here runs in a worker thread, one chunk at a time; any failure raises
    PayloadError (transport) or UpdateRejected (content), and the spool is the caller's.
    With a `live` fold, measured values are also added to the round's sums once it is granted.
    """

    def __init__(
        self,
        *,
        shape: UpdateShape,
        announced: PayloadDigest,
        spool: IO[bytes],
        path: Path,
        live: LiveFold | None = None,
    ) -> None:
        self._shape = shape
        self._announced = announced
        self._spool = spool
        self._path = path
        # the announced check; a SHA-256 is computed only for a sender that announced one
        self._check = PayloadCheck(
            sha256=announced.crc32 is None and bool(announced.sha256), crc32=native.crc32
        )
        self._head = bytearray()  # the 8-byte length and the JSON header, until complete
        self._data_start = -1  # payload offset of the data section, once the header is read
        self._live = live
        self.statistics = UpdateStatistics(shape, sink=live)
        self._decoder = CodeDecoder(shape) if shape.quantized else None
        self.received = 0
        most = shape.wire_data_bytes + self._max_header() + 8
        if announced.total_bytes > most:
            raise PayloadError(
                f"announced update of {announced.total_bytes} bytes; this run's updates carry "
                f"at most {most} bytes ({shape.wire_name} data plus a header)"
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
        self.received += len(chunk)
        if self._data_start >= 0 and self._decoder is None:
            # all data: checked and measured from the bytes as they are (consume)
            self._take(chunk, check=self._check)
            return
        self._check.update(chunk)
        view = memoryview(chunk)
        if self._data_start < 0:
            view = self._read_header(view)
        if self._decoder is not None:
            for values in self._decoder.decode(view):
                self._take(values)
        elif len(view):
            self._take(view)

    def _take(self, data: bytes | memoryview, check: PayloadCheck | None = None) -> None:
        """Measure, fold live if granted, and spool the next values of the data section
        (passing them through the payload's `check` if given: in the native pass that measures
        or folds them, where that serves)."""
        if self._live is not None:
            self._live.resume(self.statistics.element, self._spool, self._path)
        self.statistics.consume(data, check)
        self._spool.write(data)

    def _read_header(self, view: memoryview) -> memoryview:
        """Collect the 8-byte length and the header, cut anywhere; return what of `view` is
        data."""
        if len(self._head) < 8:
            take = min(len(view), 8 - len(self._head))
            self._head += view[:take]
            view = view[take:]
            if len(self._head) < 8:
                return view
            (length,) = struct.unpack("<Q", self._head)
            if not 2 <= length <= self._max_header():  # "{}" at the least
                raise UpdateRejected(
                    reason="malformed", detail=f"safetensors header of {length} bytes"
                )
        need = 8 + struct.unpack("<Q", self._head[:8])[0]
        take = min(len(view), need - len(self._head))
        self._head += view[:take]
        if len(self._head) == need:
            _check_header(bytes(self._head[8:]), self._shape)
            expected = need + self._shape.wire_data_bytes
            if expected != self._announced.total_bytes:
                raise PayloadError(
                    f"announced {self._announced.total_bytes} bytes, but its header describes "
                    f"{expected}"
                )
            self._data_start = need
        return view[take:]

    def finish(self, trailer_crc32: int | None = None) -> ReceivedUpdate:
        """The received update, once its size and check (the header's, else the trailer's
        CRC-32) are verified."""
        total = self._announced.total_bytes
        if self.received != total or not self.statistics.complete():
            raise PayloadError(f"payload truncated: received {self.received} of {total} bytes")
        announced = self._announced
        if not announced.checked:
            if trailer_crc32 is None:
                raise PayloadError(
                    "the update carried no CRC-32, neither in its header nor in its trailer"
                )
            announced = PayloadDigest(total, crc32=trailer_crc32)
        self._check.verify(announced)
        self._spool.flush()
        self._spool.truncate()  # a reused spool file may have held a longer update
        return ReceivedUpdate(
            path=self._path,
            dtype=self._shape.dtype,
            norm=self.statistics.norm,
            nbytes=self.received,
        )


def receive_bytes(payload: bytes, *, shape: UpdateShape, path: Path) -> ReceivedUpdate:
    """Receive a whole update held in memory (benchmarks, tests, tools) exactly as the
    upload path does, chunk by chunk."""
    with path.open("xb") as spool:
        receiver = UpdateReceiver(
            shape=shape, announced=PayloadDigest.of(payload, native.crc32), spool=spool, path=path
        )
        for chunk in iter_chunks(payload):
            receiver.write(chunk)
        return receiver.finish()
