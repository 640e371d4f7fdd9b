"""safetensors without whole-payload copies: written chunk by chunk straight from the tensors
(in one wire dtype), and read back as views of the chunks a payload arrived in."""

from __future__ import annotations

import bisect
import itertools
import json
import math
import struct
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from shared.errors import PayloadError
from shared.tensor_codec import CONTROL_PREFIX, StateDict

DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}

# Tensors decoded from received chunks (immutable bytes) are read, never written.
warnings.filterwarnings("ignore", message="The given buffer is not writable")


def bytes_of(values: torch.Tensor) -> memoryview:
    """The raw bytes of a flat, contiguous CPU tensor (no copy)."""
    raw: Any = values.view(torch.uint8).numpy()
    return memoryview(raw)


def header_of(entries: dict[str, Any]) -> bytes:
    """The 8-byte length and the JSON header of tensors `entries`, as safetensors writes them."""
    raw = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class StateEncoder:
    """The safetensors encoding of a state dict with every tensor in `dtype`, sorted by name
    and contiguous (byte for byte what safetensors writes), produced piece by piece: nothing
    but the chunk being cut is ever held beside the tensors themselves."""

    def __init__(self, state: Mapping[str, torch.Tensor], *, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.itemsize = torch.empty(0, dtype=dtype).element_size()
        self.names = sorted(state)
        self._flat = [state[n].detach().cpu().contiguous().reshape(-1) for n in self.names]
        self._shapes = [state[n].shape for n in self.names]
        self._starts: list[int] = []  # element offset of each tensor in the data section
        entries: dict[str, Any] = {}
        numel = 0
        for name, flat in zip(self.names, self._flat, strict=True):
            self._starts.append(numel)
            end = numel + flat.numel()
            entries[name] = {
                "dtype": DTYPE_CODES[dtype],
                "shape": list(state[name].shape),
                "data_offsets": [numel * self.itemsize, end * self.itemsize],
            }
            numel = end
        self.numel = numel
        self.header = header_of(entries)
        self.total_bytes = len(self.header) + numel * self.itemsize

    def groups(self) -> list[tuple[int, int]]:
        """[start, end) element ranges of the adapter tensors and of the control tensors: the
        runs a receiver measures block by block from their own starts."""
        bounds = [0]
        for i in range(1, len(self.names)):
            if self.names[i].startswith(CONTROL_PREFIX) != self.names[i - 1].startswith(
                CONTROL_PREFIX
            ):
                bounds.append(self._starts[i])
        bounds.append(self.numel)
        return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]

    def data(self, start: int, end: int) -> bytes:
        """Elements [start, end) of the data section in the wire dtype, as one new bytes."""
        return b"".join(self._pieces(start, end))

    def _pieces(self, start: int, end: int) -> list[memoryview]:
        first = bisect.bisect_right(self._starts, start) - 1
        parts: list[memoryview] = []
        for i in range(max(first, 0), len(self._flat)):
            at = self._starts[i]
            if at >= end:
                break
            flat = self._flat[i]
            piece = flat[max(start - at, 0) : min(end - at, flat.numel())]
            if piece.dtype != self.dtype:
                piece = piece.to(self.dtype)
            parts.append(bytes_of(piece))
        return parts

    def chunks(self, *, chunk_bytes: int, block: int = 1) -> Iterator[bytes]:
        """The header, then data chunks of at most `chunk_bytes`, cut at multiples of `block`
        elements from the start of each group, so that no receiver block spans two chunks."""
        yield self.header
        per_chunk = max(chunk_bytes // self.itemsize, 1)
        if per_chunk >= block:
            per_chunk -= per_chunk % block
        for group_start, group_end in self.groups():
            for start in range(group_start, group_end, per_chunk):
                yield self.data(start, min(start + per_chunk, group_end))

    def to_bytes(self) -> bytes:
        return b"".join([memoryview(self.header), *self._pieces(0, self.numel)])

    def sent(self, name: str) -> torch.Tensor:
        """Tensor `name` as the receiver reads it (float32): what was really sent."""
        i = self.names.index(name)
        return self._flat[i].to(self.dtype).float().view(self._shapes[i])


def _entry(name: str, entry: Any, data_bytes: int) -> tuple[torch.dtype, list[int], int, int]:
    """dtype, shape and byte span of one header entry, checked against the data section."""
    if not isinstance(entry, dict):
        raise PayloadError(f"payload is not valid safetensors: {name[:80]!r} is not a tensor")
    dtype = _CODE_DTYPES.get(str(entry.get("dtype")))
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if dtype is None:
        raise PayloadError(f"payload is not valid safetensors: {name[:80]}: unknown dtype")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise PayloadError(f"payload is not valid safetensors: {name[:80]}: bad shape")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise PayloadError(f"payload is not valid safetensors: {name[:80]}: bad data offsets")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise PayloadError(
            f"payload is not valid safetensors: {name[:80]}: {offsets[1] - offsets[0]} bytes "
            f"for shape {shape}"
        )
    return dtype, shape, offsets[0], offsets[1]


class _Received:
    """A payload held as the chunks it arrived in, read by payload offset."""

    def __init__(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        self.chunks = [memoryview(c).cast("B") for c in chunks]
        self.starts = list(itertools.accumulate((len(c) for c in self.chunks), initial=0))
        self.size = self.starts[-1]

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end), pieced together from the chunks they lie in."""
        first = bisect.bisect_right(self.starts, start) - 1
        pieces = []
        for i in range(max(first, 0), len(self.chunks)):
            at = self.starts[i]
            if at >= end:
                break
            pieces.append(self.chunks[i][max(start - at, 0) : min(end - at, len(self.chunks[i]))])
        return b"".join(pieces)

    def tensor(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        """Bytes [start, end) as a flat tensor: a view of its chunk when it lies within one
        (aligned), else a copy of its pieces."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        i = bisect.bisect_right(self.starts, start) - 1
        offset = start - self.starts[i]
        if end <= self.starts[i + 1] and offset % itemsize == 0:
            count = (end - start) // itemsize
            return torch.frombuffer(self.chunks[i], dtype=dtype, count=count, offset=offset)
        return torch.frombuffer(bytearray(self.read(start, end)), dtype=dtype)


def decode_chunks(chunks: Sequence[bytes | bytearray | memoryview]) -> StateDict:
    """Parse safetensors that arrived as `chunks` (one buffer or many); each tensor is a view
    of the chunk it lies in, and only a tensor split across chunks (or misaligned) is copied.
    The tensors are read, never written, by their users. A malformed payload raises
    PayloadError."""
    received = _Received(chunks)
    if received.size < 8:
        raise PayloadError("payload is not valid safetensors: shorter than its 8-byte length")
    (length,) = struct.unpack("<Q", received.read(0, 8))
    if length > received.size - 8:
        raise PayloadError(f"payload is not valid safetensors: header of {length} bytes")
    try:
        header = json.loads(received.read(8, 8 + length))
    except ValueError as exc:
        raise PayloadError(f"payload is not valid safetensors: header: {exc}") from None
    if not isinstance(header, dict):
        raise PayloadError("payload is not valid safetensors: header is not an object")
    header.pop("__metadata__", None)
    base, data_bytes = 8 + length, received.size - 8 - length
    state: StateDict = {}
    spans = []
    for name, entry in header.items():
        dtype, shape, start, end = _entry(name, entry, data_bytes)
        spans.append((start, end))
        if start == end:
            state[name] = torch.empty(shape, dtype=dtype)
        else:
            state[name] = received.tensor(base + start, base + end, dtype).view(shape)
    covered = 0
    for start, end in sorted(spans):
        if start != covered:
            raise PayloadError("payload is not valid safetensors: tensors overlap or leave gaps")
        covered = end
    if covered != data_bytes:
        raise PayloadError("payload is not valid safetensors: data beyond the last tensor")
    return state
