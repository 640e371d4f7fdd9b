"""Decoding an int8 update's codes into float32 values as they stream in (shared/quantization.py).

The scales and the map come first and are checked as soon as they are complete: every scale
finite, in [0, MAX_ABS_VALUE], and every map value in [-1, 1]; every decoded value is then
finite and within the bound the float wires are checked against, and a refusal names the
tensor of the first bad block before any code is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from coordinator.aggregation.measure import MAX_ABS_VALUE
from coordinator.aggregation.shape import UpdateShape
from shared.errors import PayloadError, UpdateRejected
from shared.quantization import CODE_MAP, QUANT_BLOCK, blocks_of, dequantize, prefix_bytes

# Values decoded at a time (4 MiB of float32 and 4 MiB of indices beside a chunk's codes).
PIECE = 1 << 20


class CodeDecoder:
    """The data section of one quantized update in, its float32 values out, in any cut."""

    def __init__(self, shape: UpdateShape) -> None:
        self._shape = shape
        self._prefix = bytearray()
        self._need = prefix_bytes(shape.numel)
        self._absmax = torch.empty(0)
        self._map = torch.empty(0)
        self.element = 0  # values decoded so far

    def decode(self, view: memoryview) -> Iterator[memoryview]:
        """The float32 bytes of the values whose codes `view` holds (none while the scales
        are still arriving), at most PIECE values at a time: what decoding holds beside the
        chunk stays small whatever the chunk's size."""
        if len(self._prefix) < self._need:
            take = min(len(view), self._need - len(self._prefix))
            self._prefix += view[:take]
            view = view[take:]
            if len(self._prefix) == self._need:
                self._check_prefix()
        if self.element + len(view) > self._shape.numel:
            raise PayloadError("more data than the header describes")
        for at in range(0, len(view), PIECE):
            codes = torch.frombuffer(view[at : at + PIECE], dtype=torch.uint8)
            values = dequantize(codes, self._map, self._absmax, self.element)
            self.element += values.numel()
            raw: Any = values.numpy()
            yield memoryview(raw).cast("B")

    def _check_prefix(self) -> None:
        blocks = blocks_of(self._shape.numel)
        absmax = torch.frombuffer(self._prefix, dtype=torch.float32, count=blocks)
        code_map = torch.frombuffer(self._prefix, dtype=torch.float32, offset=4 * blocks)
        if not bool((code_map.abs() <= 1).all()):  # NaN fails too
            raise UpdateRejected(reason="malformed", detail=f"{CODE_MAP}: values outside [-1, 1]")
        bad = torch.nonzero(~(absmax >= 0) | (absmax > MAX_ABS_VALUE))
        if len(bad):
            block = int(bad[0, 0])
            where, scale = self._shape.name_at(block * QUANT_BLOCK), float(absmax[block])
            if not math.isfinite(scale):
                raise UpdateRejected(reason="non_finite", detail=f"{where}: NaN or Inf scale")
            raise UpdateRejected(
                reason="magnitude",
                detail=f"{where}: scale {scale:.3g} outside [0, {MAX_ABS_VALUE:g}]",
            )
        self._absmax, self._map = absmax, code_map
