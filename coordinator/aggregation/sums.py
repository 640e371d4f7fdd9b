"""A round's running sums, as folds add the spooled and the streaming updates to them.

Several updates ready at once (arrived out of order, or left for the round's close) are added
window by window in one pass: each window of the sums stays in the CPU's cache while every
update adds to it, so the sums are read and written once for them all rather than once each
(bench/server_round.py). Per value the additions come in the same order and with the same
arithmetic as one update after another (coordinator/aggregation/kernels.py), so the same bits.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from coordinator.aggregation import native
from coordinator.aggregation.kernels import add_measured, add_scaled
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.spool import PAGE, SpooledUpdates, SpoolView
from coordinator.strategies import RoundAggregate
from shared.payload import BLOCK_ELEMENTS, CHUNK_BYTES, PayloadCheck

# Elements folded per call. (Where spools are mapped: float16 ones, or any the native loop
# does not read; spool.py.) The pages of a spool just written are mapped on first touch by
# both of torch's threads at once, and small windows make them contend: 4M elements took
# 180-300 ms per 150M, 32M elements 40 ms (the floor: 30). Larger windows would keep more of
# an update mapped (counted as the coordinator's memory) before it is let go.
FOLD_BLOCK = 1 << 25
# Updates folded together: in windows of at most MANY_BLOCK elements (8 MiB of float32 sums).
# At most MANY_BYTES of them, and an eighth of the adapter's size (or a chunk), is mapped at a
# time: MANY_UPDATES updates at most per pass, in windows that shrink as they are more, and as
# many as fit a chunk each carried by a live fold.
MANY_BLOCK = 1 << 21
MANY_BYTES = 64 << 20
MANY_UPDATES = 16
# Elements per [K, B] block of the coordinate rules: K rows of it stay in cache.
STACK_BLOCK = 1 << 18


class RoundSums:
    """The running sums of one round attempt (`aggregate`), for updates shaped as `shape`."""

    def __init__(self, *, aggregate: RoundAggregate, shape: UpdateShape) -> None:
        self.aggregate = aggregate
        self.shape = shape

    @property
    def mapped_most(self) -> int:
        """Bytes of waiting updates mapped at once, at most (a chunk's worth at least; an
        eighth of the adapter counted in float32, as its memory is)."""
        return min(MANY_BYTES, max(CHUNK_BYTES, self.shape.numel * 4 // 8))

    @property
    def stretch(self) -> int:
        """Bytes of an update that a live fold adds at a time, at most: a chunk's worth."""
        return min(CHUNK_BYTES, self.shape.numel * self.shape.itemsize)

    @property
    def carried_most(self) -> int:
        """Waiting updates a live fold carries at most: a chunk's stretch of each mapped."""
        return min(MANY_UPDATES - 1, self.mapped_most // self.stretch)

    def carry_hold(self, carried: int) -> int:
        """Bytes of pages read that each of `carried` updates carried along by a live fold
        may keep mapped (SpoolView's `hold`): what a chunk's stretch leaves of its share of
        `mapped_most`, so that fewer unmappings cost the same memory."""
        return max(0, self.mapped_most // max(carried, 1) - self.stretch)

    @functools.cached_property
    def _addresses(self) -> list[tuple[int, int, int, str, bool]]:
        """Per run: its first and past-the-last data element, the address its values add up
        at (0 where the sum is not a float32 buffer the native loops can add into), that sum's
        name and whether it is the control variate's. Asked once, not for every chunk: an
        aggregate's buffers are never replaced."""
        found = []
        for run in self.shape.runs:
            name = "control_total" if run.control else "total"
            total = getattr(self.aggregate, name)
            usable = total.dtype == torch.float32 and total.is_contiguous()
            usable = usable and run.target + run.count <= total.numel()
            address = total.data_ptr() + 4 * run.target if usable else 0
            found.append((run.start, run.start + run.count, address, name, run.control))
        return found

    def buffers(self) -> set[str]:
        return {"control_total" if run.control else "total" for run in self.shape.runs}

    def fold_whole(
        self, paths: Sequence[Path], alphas: Sequence[float], weights: Sequence[float]
    ) -> None:
        """Add whole spooled updates in the order given, MANY_UPDATES at most per pass, and
        account each pass's weights (the next pass adds to what it wrote)."""
        for first in range(0, len(paths), MANY_UPDATES):
            batch = slice(first, first + MANY_UPDATES)
            self.fold_spooled(paths[batch], alphas[batch], stop=self.shape.numel)
            for weight in weights[batch]:
                self.account(weight)

    def account(self, weight: float) -> None:
        """An update is in the sums: every run of it together covers its buffers."""
        self.aggregate.stale -= self.buffers()
        self.aggregate.weight_sum += weight

    def fold_spooled(self, paths: Sequence[Path], alphas: Sequence[float], *, stop: int) -> None:
        """Add elements [0, stop) of the updates spooled in `paths` to the sums (whole ones,
        or what a live fold catches up on), in one pass over them, in the order given (bit
        for bit as one after another)."""
        if stop <= 0 or not paths:
            return
        window = FOLD_BLOCK
        if len(paths) > 1:  # whole pages of each
            fits = self.mapped_most // (len(paths) * self.shape.itemsize) // PAGE * PAGE
            window = min(MANY_BLOCK, max(PAGE, fits))
        with SpooledUpdates(paths, self.shape.dtype, elements=stop) as spools:
            for run in self.shape.runs:
                for start in range(0, min(run.count, stop - run.start), window):
                    count = min(window, run.count - start, stop - run.start - start)
                    element = run.start + start
                    target, write, scales = self._target(element, count, alphas)
                    spools.add_into(target, element, scales, write=write)

    def _target(
        self, element: int, count: int, alphas: Sequence[float]
    ) -> tuple[torch.Tensor, bool, list[float]]:
        """Where data elements [element, element + count) (within one run) add up: their sum,
        whether it is to be written rather than added to (no fold has written it yet this
        round: its earlier round's values are stale), and the scales of the updates (their
        alphas; control values are added as they are)."""
        run = self.shape.run_at(element)
        name = "control_total" if run.control else "total"
        at = run.target + element - run.start
        target = getattr(self.aggregate, name)[at : at + count]
        scales = [1.0] * len(alphas) if run.control else list(alphas)
        return target, name in self.aggregate.stale, scales

    def add_values(
        self,
        element: int,
        values: torch.Tensor,
        *,
        alpha: float,
        measuring: bool = False,
        carried: SpooledUpdates | None = None,
        carried_alphas: Sequence[float] = (),
    ) -> torch.Tensor | None:
        """Add data elements [element, element + len) (within one run) to their sum:
        adapter values times `alpha`, control values as they are; then the same elements of
        the `carried` spooled updates, each times its alpha, while that stretch is in the
        cache. `measuring` (whole blocks): return each block's norm of `values` as well."""
        target, write, scales = self._target(element, values.numel(), [alpha, *carried_alphas])
        norms = None
        if measuring:
            norms = add_measured(target, values, scales[0], write=write)
        else:
            add_scaled(target, values, scales[0], write=write)
        if carried is not None:
            carried.add_into(target, element, scales[1:])
        return norms

    def add_chunk(
        self,
        element: int,
        chunk: bytes,
        blocks: int,
        norms: int,
        *,
        alpha: float,
        carried: SpooledUpdates | None = None,
        carried_alphas: Sequence[float] = (),
        check: PayloadCheck | None = None,
    ) -> bool:
        """add_values of a received chunk's bytes, whole blocks of values within one run,
        measuring them (their block norms written to the float32s at address `norms`) and
        passing them through the payload's `check` if given, and the `carried` ones read into
        each block right after, all in one native call with no tensor made
        (native.measure_chunk, native.add_measured_chunk say why). False (and nothing added or
        checked) where it cannot serve."""
        spools = carried.read if carried is not None else []
        if spools is None:
            return False
        run = bisect.bisect_right(self.shape.run_starts, element) - 1
        start, end, address, name, control = self._addresses[run]
        if not address or not start <= element <= end - blocks * BLOCK_ELEMENTS:
            return False
        address += 4 * (element - start)
        alpha, write = 1.0 if control else alpha, name in self.aggregate.stale
        return native.add_measured_chunk(
            address, chunk, alpha, write=write, blocks=blocks, size=BLOCK_ELEMENTS, norms=norms,
            widened=self.shape.dtype == "bfloat16", spools=spools, element=element,
            alphas=[1.0] * len(spools) if control else carried_alphas, check=check,
        )  # fmt: skip

    def stacked(
        self, paths: Sequence[Path], scales: Sequence[float]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(adapter offset, [K, B] block) over the adapter values of every update, each row
        scaled by its clipping factor."""
        stack = torch.empty(len(paths), STACK_BLOCK, dtype=torch.float32)
        with contextlib.ExitStack() as opened:
            spools = [opened.enter_context(SpoolView(path, self.shape.dtype)) for path in paths]
            for run in (r for r in self.shape.runs if not r.control):
                for start in range(0, run.count, STACK_BLOCK):
                    n = min(STACK_BLOCK, run.count - start)
                    for row, (spool, scale) in enumerate(zip(spools, scales, strict=True)):
                        stack[row, :n].copy_(spool.values(run.start + start, n)).mul_(scale)
                        spool.release(run.start + start, n)
                    yield run.target + start, stack[:, :n]
