"""Measuring an update's values as they stream in: finiteness, magnitude bound, L2 norm.

The norm is summed over fixed blocks of BLOCK_ELEMENTS values, counted from the start of each
run (the adapter, the control variate), each block reduced on its own and the blocks' squares
added exactly (math.fsum): the same update measures the same, bit for bit, however the sender
cut its chunks. A sender that cuts on block boundaries (ours does) is measured in place, a few
complete blocks per call; only a block split across two chunks is pieced together. Where the
native loops serve, a chunk of whole blocks within one run (all but a run's last, as ours cut
them) is measured, and folded live, by one call on its bytes, no tensor made of it.
The block norms vouch for the values as well (no value exceeds its block's norm), so a chunk
costs one pass; only a block whose norm is large or not finite is checked value by value.
Such a chunk is CRC-checked in that same pass where the loops' CRC-32 serves, whether it is
measured on arrival (native.check_chunk) or folded live (native.add_measured_chunk), so it is
fetched from memory once.
A float32 update is measured by the native loops (native.py) where they serve, in its live
fold's pass or alone, the same bits either way; by ATen's norm where they do not. So is a
bfloat16 update where the native loops serve bfloat16 (kernels.native_bfloat16). Elsewhere a
16-bit update offered a live fold is measured in its fold's pass once it is folded live, and
in a compiled loop of its own before that (both loops' block sums may differ from the eager
ones in the last bits): its norm then serves nothing, since only rules without clipping offer
live folds, and the bound holds for any summation order.
"""

from __future__ import annotations

import ctypes
import itertools
import math
from typing import Protocol

import torch

from coordinator.aggregation import native
from coordinator.aggregation.kernels import native_bfloat16, widened_norms
from coordinator.aggregation.shape import UpdateShape
from shared.errors import PayloadError, UpdateRejected
from shared.payload import BLOCK_ELEMENTS, PayloadCheck

# No LoRA delta comes near this; far below it, float32 running sums cannot overflow.
MAX_ABS_VALUE = 1e6
# A block whose float32 norm is at most this holds only finite values below MAX_ABS_VALUE:
# no value exceeds the block's exact norm, and a float32 sum of BLOCK_ELEMENTS non-negative
# squares, added in any order, is within 0.2% of the exact sum. Any other block (its norm
# large, NaN or Inf, Inf also when one huge finite value's square overflows float32) is
# checked value by value.
TRUSTED_NORM = MAX_ABS_VALUE / 2


def _trusted(norms: list[float]) -> bool:
    """Whether every block norm is at most TRUSTED_NORM (max skips a NaN, the sum does not)."""
    return max(norms) <= TRUSTED_NORM and not math.isnan(sum(norms))


class Sink(Protocol):
    """Where measured values go on (a live fold, coordinator/aggregation/live.py)."""

    def add(self, element: int, values: torch.Tensor) -> None:
        """Take checked values of the data section starting at `element` (one run)."""

    def add_measuring(self, element: int, values: torch.Tensor) -> torch.Tensor | None:
        """Take whole blocks of values (16-bit, or float32 where the native loops serve)
        before they are checked, returning each block's norm from the same pass; None if it
        took nothing (check, then `add`)."""

    @property
    def adding(self) -> bool:
        """Whether it takes values now (add_chunk may still take none: the fold may end it)."""

    def add_chunk(
        self, element: int, chunk: bytes, blocks: int, norms: int, check: PayloadCheck | None
    ) -> bool:
        """Take whole blocks of a chunk's bytes (where the native loops serve their dtype)
        before they are checked, writing each block's norm to the float32s at address `norms`
        from the same pass, and passing the bytes through the payload's CRC-only `check` in it
        if given (where native.crc_folds()); False if it took nothing and wants none of these
        values (measure and check them; `add` them not)."""


class UpdateStatistics:
    """Consumes the data section of one update in order (any cut); raises UpdateRejected at
    the first non-finite or too large value, naming its tensor. A `sink`, if given, gets
    every measured stretch in order, each within one run: once it passed its checks, or, for
    whole blocks of 16-bit values it takes unchecked, in the pass that measures them (a sink
    that then sees them refused must undo them)."""

    def __init__(self, shape: UpdateShape, sink: Sink | None = None) -> None:
        self._shape = shape
        self._sink = sink
        # the widening pass, or the native float32 loop, can measure too
        self._fusable = shape.dtype != "float32" or native.library() is not None
        self._dtype = getattr(torch, shape.dtype)
        self._itemsize = shape.itemsize
        self._runs = shape.runs
        self._run = 0  # index of the run being measured
        self._pending = bytearray()  # the start of a block whose end is in the next chunk
        self.element = 0  # data elements measured so far
        # every block's L2 norm, run after run (a run's last block may be short)
        self._firsts = list(
            itertools.accumulate((-(-r.count // BLOCK_ELEMENTS) for r in self._runs), initial=0)
        )
        self._norms = (ctypes.c_float * self._firsts[-1])()
        self._norms_at = ctypes.addressof(self._norms)
        self._widened = shape.dtype == "bfloat16"
        self._in_place: bool | None = None  # whether whole chunks are measured in place (below)

    @property
    def norm(self) -> float:
        """L2 norm of the adapter values (control values excluded): the blocks' squares added
        exactly, in any order the same."""
        squares = (
            norm * norm
            for run, first, end in zip(self._runs, self._firsts, self._firsts[1:], strict=False)
            if not run.control
            for norm in self._norms[first:end]
        )
        return math.sqrt(math.fsum(squares))

    def _block(self) -> int:
        """The index of the block that starts at `element` (in `_norms`)."""
        run = self._runs[self._run]
        return self._firsts[self._run] + (self.element - run.start) // BLOCK_ELEMENTS

    def _room(self) -> int:
        """Elements left in the current run."""
        run = self._runs[self._run]
        return run.start + run.count - self.element

    def consume(self, data: bytes | memoryview, check: PayloadCheck | None = None) -> None:
        """Measure the next bytes of the data section, passing them through the payload's
        `check` (if given): a chunk of whole blocks (as our senders cut them) in the native
        pass that measures it, or adds it to the live fold, where the loops' CRC-32 serves it
        (the chunk is then fetched from memory once); any other bytes first."""
        if type(data) is bytes and not self._pending and (blocks := self._whole_blocks(data)):
            self._chunk(data, blocks, check)
            return
        if check is not None:
            check.update(data)
        view = memoryview(data)
        size = self._itemsize
        while len(view):
            if self._run >= len(self._runs):
                raise PayloadError("more data than the header describes")
            block = min(BLOCK_ELEMENTS, self._room())
            if self._pending or len(view) < block * size:
                take = min(block * size - len(self._pending), len(view))
                self._pending += view[:take]
                view = view[take:]
                if len(self._pending) == block * size:
                    self._measure(memoryview(self._pending), blocks=1)
                    self._pending = bytearray()
                continue
            whole = min(len(view) // (block * size), self._room() // block)
            self._measure(view[: whole * block * size], blocks=whole)
            view = view[whole * block * size :]

    def _measure(self, data: memoryview, *, blocks: int) -> None:
        values = torch.frombuffer(data, dtype=self._dtype)
        norms, sunk = None, False
        if self._sink is not None and self._fusable and values.numel() == blocks * BLOCK_ELEMENTS:
            norms = self._sink.add_measuring(self.element, values)
            sunk = norms is not None
            if norms is None and self._dtype != torch.float32:
                norms = widened_norms(values)  # not (yet) folded live: as its fold would
        if norms is None and self._measured_natively():
            norms = native.block_norms(values, blocks)
        if norms is None:
            norms = torch.linalg.vector_norm(values.view(blocks, -1), dim=1, dtype=torch.float32)
        block_norms = norms.tolist()
        if not _trusted(block_norms):
            self._check_values(values)  # refuses, or the values are fine and so are the norms
        first = self._block()
        self._norms[first : first + blocks] = block_norms
        if self._sink is not None and not sunk:
            self._sink.add(self.element, values)
        self.element += values.numel()
        if self._room() == 0:
            self._run += 1

    def _whole_blocks(self, chunk: bytes) -> int:
        """The blocks of a chunk of whole blocks within one run (as our senders cut them),
        where the native loops serve its dtype: measured on its bytes, no tensor made of it
        (native.measure_chunk says why); 0 for any other chunk."""
        count, odd = divmod(len(chunk), self._itemsize)
        blocks, short = divmod(count, BLOCK_ELEMENTS)
        if odd or short or self._run >= len(self._runs) or count > self._room():
            return 0
        if self._in_place is None:  # decided at the first chunk: see _measured_natively
            self._in_place = self._measured_natively() and native.library() is not None
        return blocks if self._in_place else 0

    def _chunk(self, chunk: bytes, blocks: int, check: PayloadCheck | None) -> None:
        """Check (if `check`), measure and, if the sink takes it, add a chunk of whole blocks,
        all in one native call where the loops' CRC-32 serves a CRC-only check; else checked
        first, then measured (and added) in one call."""
        first, sink = self._block(), self._sink
        norms = self._norms_at + 4 * first
        if check is not None and not (check.crc_only and native.crc_folds()):
            check.update(chunk)
            check = None
        if sink is not None and sink.adding:
            seen = check.received if check is not None else 0
            added = sink.add_chunk(self.element, chunk, blocks, norms, check)
            if check is not None and check.received != seen:
                check = None  # checked in the add's pass (even where the live fold then ended)
            if added:
                self._measured(chunk, first, blocks)
                return
        if check is not None:
            checked = native.check_chunk(
                chunk, blocks, BLOCK_ELEMENTS, norms, widened=self._widened, crc=check.crc32
            )
            if checked is not None:
                check.checked(checked[0], len(chunk), checked[1])
                self._measured(chunk, first, blocks)
                return
            check.update(chunk)
        if native.measure_chunk(chunk, blocks, BLOCK_ELEMENTS, norms, widened=self._widened):
            self._measured(chunk, first, blocks)
        else:  # (not where _whole_blocks counts blocks: the loops serve there)
            self._measure(memoryview(chunk), blocks=blocks)

    def _measured(self, chunk: bytes, first: int, blocks: int) -> None:
        """After a chunk's norms are written from block `first` on: refuse a bad value (the
        norms vouch for the rest), and move on."""
        if not _trusted(self._norms[first : first + blocks]):
            self._check_values(torch.frombuffer(chunk, dtype=self._dtype))
        self.element += blocks * BLOCK_ELEMENTS
        if self._room() == 0:
            self._run += 1

    def _measured_natively(self) -> bool:
        """Whether the native loops measure values not folded live (bfloat16 ones only where
        they serve bfloat16, checked at the first such values, not at the update's start)."""
        return self._dtype == torch.float32 or (self._dtype == torch.bfloat16 and native_bfloat16())

    def _check_values(self, values: torch.Tensor) -> None:
        """Refuse the first non-finite or too large value, naming its tensor."""
        wide = values.float()
        bad = torch.nonzero(~torch.isfinite(wide) | (wide.abs() > MAX_ABS_VALUE))
        if not len(bad):
            return
        first = int(bad[0, 0])
        where = self._shape.name_at(self.element + first)
        value = float(wide[first])
        if not math.isfinite(value):
            raise UpdateRejected(reason="non_finite", detail=f"{where}: NaN or Inf values")
        raise UpdateRejected(
            reason="magnitude", detail=f"{where}: |value| {abs(value):.3g} above {MAX_ABS_VALUE:g}"
        )

    def complete(self) -> bool:
        return self.element == self._shape.numel and not self._pending
