"""Folding an update into the round's sums while it streams in.

The update that is next in the fold's canonical order (coordinator/aggregation/fold.py) while
it arrives is folded live: each block is added to the running sum as soon as it is measured,
while its bytes are still in the CPU's cache, so that its values are read once rather than
measured on arrival and read again from the spool. An update that becomes next mid-stream
first folds what it has spooled. Updates that arrived earlier and wait right after it in the
order are carried along: each block of theirs is added, from their spools, right after the
live one's, while that stretch of the sums is in the cache, so that the sums are read and
written once for them all. The fold (RoundFold) grants and revokes; the receiver adds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import torch

from coordinator.aggregation.spool import SpooledUpdates
from coordinator.aggregation.sums import RoundSums
from shared.payload import BLOCK_ELEMENTS, PayloadCheck

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Carried:
    """An accepted update waiting in its spool, added along with a live fold."""

    name: str  # the silo's
    path: Path
    alpha: float
    token: object  # what the fold holds for it: still the same once the live one arrives?


class LiveFold:
    """One update folded while it streams in, from the moment its fold grants it the sums
    (it is next in the canonical order). The receiver calls `resume` before each stretch of
    values it measures (a chunk, or a piece of a decoded int8 chunk; folding from the spool
    what was measured before the grant, and taking on the waiting updates it carries) and
    `add` for every measured block; the fold revokes it once the update arrives, is refused,
    or the round closes. A spool that cannot be read ends the live fold, not the upload: the
    update is spooled all the same, and the sums rebuilt.
    """

    def __init__(
        self,
        sums: RoundSums,
        silo_id: str,
        weight: float,
        *,
        waiting: Callable[[str], list[Carried]],
    ) -> None:
        """`waiting(silo_id)`: the accepted updates right after it in the order, not folded
        yet (asked as it begins adding)."""
        self._sums = sums
        self._waiting = waiting
        self.silo_id = silo_id
        self.weight = weight
        self._lock = threading.Lock()
        self._granted = False
        self._revoked = False
        self._adding = False  # set by the receiver's thread only
        self._touched = False  # an add began: the sums hold some of this update
        self.folded = 0  # data elements in the sums, counted from the start
        self.carried: list[Carried] = []  # added along, as far as `folded`
        self._carried_alphas: list[float] = []
        self.seconds = 0.0  # spent adding (its own values and the carried ones')
        self._spools: SpooledUpdates | None = None  # of the carried updates
        self._opened = contextlib.ExitStack()

    def grant(self) -> None:
        """Without the lock: a grant never waits for the receiver (it may be called on the
        event loop), and one after a revocation is never acted on (resume checks)."""
        self._granted = True

    def revoke(self) -> tuple[int, bool]:
        """Stop adding (waiting for an add in progress). The first time: the elements added
        (of this update and as many of each carried one), and whether the sums hold any of
        them (also part of an add that failed); after that (0, False), as it is already
        accounted for."""
        with self._lock:
            if self._revoked:
                return 0, False
            self._revoked = True
            self._spools = None
            self._opened.close()
            return self.folded, self._touched

    def resume(self, measured: int, spool: IO[bytes], path: Path) -> None:
        """At the start of a chunk: once granted, fold the `measured` elements already
        spooled, with those of the updates it carries, so that the chunks from here on are
        added as they are measured."""
        if self._adding or not self._granted:
            return
        with self._lock:
            if self._revoked:
                return
            spool.flush()
            started = time.perf_counter()
            try:
                carried = self._waiting(self.silo_id)
                hold = self._sums.carry_hold(len(carried))
                self._spools = self._opened.enter_context(
                    SpooledUpdates([c.path for c in carried], self._sums.shape.dtype, hold=hold)
                )
                self.carried = carried
                self._carried_alphas = [c.alpha for c in carried]
                self._touched = self._touched or measured > 0
                self._sums.fold_spooled(
                    [path, *(c.path for c in carried)],
                    [self.weight, *(c.alpha for c in carried)],
                    stop=measured,
                )
            except OSError as exc:
                self._give_up(exc)
                return
            finally:
                self.seconds += time.perf_counter() - started
            self.folded, self._adding = measured, True

    def add(self, element: int, values: torch.Tensor) -> None:
        """Checked values of the data section, starting at `element`, all in one run."""
        if self._adding:
            self._add(element, values, measuring=False)

    def add_measuring(self, element: int, values: torch.Tensor) -> torch.Tensor | None:
        """Whole blocks of values (16-bit, or float32 where the native loops serve), added
        and measured in one pass: their block norms, or None if nothing was added. Values
        then refused make the fold abandon this live fold, and the sums are rebuilt."""
        return self._add(element, values, measuring=True) if self._adding else None

    @property
    def adding(self) -> bool:
        """Whether it takes values now (add_chunk may still take none: it may be revoked)."""
        return self._adding

    def add_chunk(
        self, element: int, chunk: bytes, blocks: int, norms: int, check: PayloadCheck | None
    ) -> bool:
        """Whole blocks of a received chunk's bytes, added and measured by one native call
        (RoundSums.add_chunk), their norms written at address `norms`, and passed through the
        payload's `check` in that call if given; False if nothing was added, and then no more
        values are wanted (not adding, or this live fold ended). As with add_measuring, values
        then refused end this live fold; so does a carried spool that cannot be read (the
        check then has the chunk all the same)."""
        if not self._adding:
            return False

        def add() -> bool:
            added = self._sums.add_chunk(
                element,
                chunk,
                blocks,
                norms,
                alpha=self.weight,
                carried=self._spools,
                carried_alphas=self._carried_alphas,
                check=check,
            )
            if not added:  # (no sums of a round are out of the loops' reach)
                raise OSError("the native loops cannot add into this round's sums")
            return added

        return bool(self._locked(element, blocks * BLOCK_ELEMENTS, add))

    def _add(self, element: int, values: torch.Tensor, *, measuring: bool) -> torch.Tensor | None:
        return self._locked(
            element,
            values.numel(),
            lambda: self._sums.add_values(
                element,
                values,
                alpha=self.weight,
                measuring=measuring,
                carried=self._spools,
                carried_alphas=self._carried_alphas,
            ),
        )

    def _locked(self, element: int, count: int, add: Callable[[], _T]) -> _T | None:
        """`add` the `count` elements from `element` on, unless revoked: its result; None if
        revoked, or if a spool could not be read (this live fold then ends)."""
        with self._lock:
            if self._revoked:
                return None
            if element != self.folded:  # the receiver measures in order: never happens
                raise RuntimeError(f"live fold at element {element}, expected {self.folded}")
            self._touched = True
            started = time.perf_counter()
            try:
                result = add()
            except OSError as exc:
                self._give_up(exc)
                return None
            finally:
                self.seconds += time.perf_counter() - started
            self.folded += count
            return result

    def _give_up(self, exc: OSError) -> None:
        """A spool could not be read (under the lock): add nothing more; what was added is
        reported by `revoke`, and the fold rebuilds the sums."""
        log.warning("the live fold of %s stops: %s; its update is folded later", self.silo_id, exc)
        self._touched, self._adding, self._granted = True, False, False
