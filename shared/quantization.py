"""Updates as blockwise 8-bit codes: a quarter of float32's bytes on the wire (run option
`--wire-dtype int8`; the adapter is downloaded in bfloat16).

The silo quantizes with bitsandbytes' blockwise 8-bit quantization (with the dynamic map of
its 8-bit optimizer states, fine steps near zero): one float32 absmax per QUANT_BLOCK values
of the data section, counted from its start, and one uint8 code per value.
A value is code_map[code] * absmax of its block, one float32 product: the coordinator decodes
without bitsandbytes, bit for bit as bitsandbytes does, and the silo knows exactly what it
sent. The update is still safetensors, laid out as safetensors writes mixed dtypes (the
float32 tensors first, each group sorted by name):

    quantization::absmax  F32 [blocks]
    quantization::code    F32 [256]     the map, sent along: no silo and coordinator depend on
                                        one bitsandbytes version agreeing with another's
    <every update tensor> U8  [its shape]

so a receiver has every scale before the first code. Relative RMS error over 16M Gaussian
values: 1.08% with blocks of 256 values, 1.30% with 4,096; where tensors 100x apart in scale
alternate every 512 values (a tiny adapter's A and B), the smaller ones' error is 1.08% with
256 and 4.9% with 4,096. Hence 256: 0.254 of float32's bytes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from shared.safetensors_stream import bytes_of, header_of

INT8 = "int8"  # the run's wire dtype that sends updates as codes
QUANT_BLOCK = 256
ABSMAX = "quantization::absmax"
CODE_MAP = "quantization::code"
CODE_MAP_SIZE = 256


def download_dtype(wire_dtype: str) -> str:
    """The dtype a run's adapter is downloaded in: int8 codes are for updates (deltas) only."""
    return "bfloat16" if wire_dtype == INT8 else wire_dtype


def blocks_of(numel: int) -> int:
    """Scales of a data section of `numel` values."""
    return -(-numel // QUANT_BLOCK)


def prefix_bytes(numel: int) -> int:
    """Bytes of the scales and the map, before the first code."""
    return 4 * (blocks_of(numel) + CODE_MAP_SIZE)


def dequantize(
    codes: torch.Tensor, code_map: torch.Tensor, absmax: torch.Tensor, first: int
) -> torch.Tensor:
    """Float32 values of data elements [first, first + len(codes)) from their codes; `absmax`
    holds the scale of every block of the data section."""
    values = code_map.index_select(0, codes.int())
    count = values.numel()
    at = 0
    while at < count:  # a block cut at the start, the whole blocks, a block cut at the end
        element = first + at
        block, offset = divmod(element, QUANT_BLOCK)
        if offset == 0 and count - at >= QUANT_BLOCK:
            whole = (count - at) // QUANT_BLOCK
            stretch = values[at : at + whole * QUANT_BLOCK].view(whole, QUANT_BLOCK)
            stretch.mul_(absmax[block : block + whole, None])
            at += whole * QUANT_BLOCK
        else:
            take = min(QUANT_BLOCK - offset, count - at)
            values[at : at + take].mul_(absmax[block])
            at += take
    return values


class QuantizedEncoder:
    """The blockwise 8-bit safetensors encoding of a state dict, produced chunk by chunk like
    shared.safetensors_stream.StateEncoder: the scales first (one pass over the values, which
    also refuses NaN and Inf with FloatingPointError, a silo's non_finite_loss: bitsandbytes
    would code them as finite values), then the codes of one chunk at a time."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        import bitsandbytes.functional as bnb  # only silos sending int8 updates need it

        self._bnb = bnb
        self.names = sorted(state)
        self._flat = [state[n].detach().cpu().contiguous().reshape(-1) for n in self.names]
        self._shapes = [state[n].shape for n in self.names]
        self._starts = [0, *itertools.accumulate(f.numel() for f in self._flat)]
        self.numel = self._starts[-1]
        self.code_map = bnb.create_dynamic_map(signed=True).float().cpu()
        self.absmax = self._scales()
        blocks = self.absmax.numel()
        entries: dict[str, Any] = {
            ABSMAX: {"dtype": "F32", "shape": [blocks], "data_offsets": [0, 4 * blocks]},
            CODE_MAP: {
                "dtype": "F32",
                "shape": [CODE_MAP_SIZE],
                "data_offsets": [4 * blocks, prefix_bytes(self.numel)],
            },
        }
        base = prefix_bytes(self.numel)
        for name, start, end in zip(self.names, self._starts, self._starts[1:], strict=False):
            entries[name] = {
                "dtype": "U8",
                "shape": list(state[name].shape),
                "data_offsets": [base + start, base + end],
            }
        self.header = header_of(entries)
        self.total_bytes = len(self.header) + base + self.numel

    def values(self, start: int, end: int) -> torch.Tensor:
        """Float32 values of data elements [start, end), to be read (a view of a float32
        tensor where they lie in one)."""
        parts = []
        for flat, at in zip(self._flat, self._starts, strict=False):
            if at >= end or at + flat.numel() <= start:
                continue
            parts.append(flat[max(start - at, 0) : min(end - at, flat.numel())].float())
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else torch.empty(0)

    def _pieces(self, per_piece: int) -> Iterator[tuple[int, int]]:
        per_piece = max(per_piece // QUANT_BLOCK, 1) * QUANT_BLOCK
        for start in range(0, self.numel, per_piece):
            yield start, min(start + per_piece, self.numel)

    def _scales(self) -> torch.Tensor:
        absmax = torch.empty(blocks_of(self.numel))
        for start, end in self._pieces(1 << 22):
            piece = self.values(start, end)
            if piece.numel() % QUANT_BLOCK:  # the last block, cut short
                piece = torch.nn.functional.pad(piece, (0, -piece.numel() % QUANT_BLOCK))
            scales = torch.linalg.vector_norm(piece.view(-1, QUANT_BLOCK), ord=math.inf, dim=1)
            if not bool(torch.isfinite(scales).all()):
                bad = start + int(torch.nonzero(~torch.isfinite(piece))[0, 0])
                raise FloatingPointError(
                    f"{self.name_at(bad)}: NaN or Inf values; the update is not sent"
                )
            absmax[start // QUANT_BLOCK : start // QUANT_BLOCK + scales.numel()] = scales
        return absmax

    def name_at(self, element: int) -> str:
        """The tensor holding data element `element`."""
        for name, start, end in zip(self.names, self._starts, self._starts[1:], strict=False):
            if start <= element < end:
                return name
        raise IndexError(element)

    def codes(self, start: int, end: int) -> torch.Tensor:
        """uint8 codes of data elements [start, end), both on block boundaries (or `end` the
        last element)."""
        values = self.values(start, end)
        # a copy of the map: a bitsandbytes version that wrote into it would make the codes
        # disagree with the map already sent
        codes, state = self._bnb.quantize_blockwise(
            values, code=self.code_map.clone(), blocksize=QUANT_BLOCK
        )
        first = start // QUANT_BLOCK
        if not torch.equal(state.absmax.float(), self.absmax[first : first + state.absmax.numel()]):
            raise RuntimeError("bitsandbytes scaled a block differently from its absmax")
        return codes

    def sent(self, name: str) -> torch.Tensor:
        """Tensor `name` as the receiver decodes it (float32): what was really sent."""
        i = self.names.index(name)
        start, end = self._starts[i], self._starts[i + 1]
        first = start - start % QUANT_BLOCK
        stop = min(-(-end // QUANT_BLOCK) * QUANT_BLOCK, self.numel)  # whole blocks
        values = dequantize(self.codes(first, stop), self.code_map, self.absmax, first)
        return values[start - first : end - first].view(self._shapes[i])

    def chunks(self, *, chunk_bytes: int, block: int = QUANT_BLOCK) -> Iterator[bytes]:
        """The header, then the scales and the map, then the codes, in chunks of at most
        `chunk_bytes`, the codes cut at multiples of `block` (a multiple of QUANT_BLOCK)."""
        if block % QUANT_BLOCK or chunk_bytes < block:
            raise ValueError(f"codes are cut at multiples of {QUANT_BLOCK} values")
        yield self.header
        prefix = b"".join([bytes_of(self.absmax), bytes_of(self.code_map)])
        for at in range(0, len(prefix), chunk_bytes):
            yield prefix[at : at + chunk_bytes]
        for start, end in self._pieces(chunk_bytes - chunk_bytes % block):
            yield bytes(bytes_of(self.codes(start, end)))

    def to_bytes(self, chunk_bytes: int = 1 << 22) -> bytes:
        """The whole payload at once (tests, tools)."""
        return b"".join(self.chunks(chunk_bytes=chunk_bytes))
