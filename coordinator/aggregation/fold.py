"""Folding a round's spooled updates into its delta, in an order that arrival cannot change.

Updates are folded in the order of the selected silos' names, never in the order they
arrive: a weighted mean folds each update as soon as every silo before it in that order has
been folded (so most of the work still happens while others upload), and the rest when the
round closes. Float sums then come out bit for bit the same whatever the network did.
The update that is next in that order while it streams in is folded live instead
(coordinator/aggregation/live.py). If it is then refused, or the round closes first, the sums
are rebuilt from the spools of the updates before it and live folding stops for the rest of
the attempt: a silo can cost the round one rebuild, never more.
Rules that need every update at once (weight-share caps, median-relative clipping, trimmed
mean, median, Krum) run when the round closes, block by block over the spooled files, so that
memory holds a block of each update rather than K whole updates.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator.aggregation import robust
from coordinator.aggregation.heap import release_freed
from coordinator.aggregation.kernels import add_many, add_measured, add_scaled
from coordinator.aggregation.live import Carried, LiveFold
from coordinator.aggregation.receiver import ReceivedUpdate
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.spool import PAGE, SpoolPool, SpoolView
from coordinator.run_state import RunSpec
from coordinator.strategies import RoundAggregate
from shared.payload import CHUNK_BYTES

log = logging.getLogger(__name__)

# Elements folded per call. The pages of a spool just written are mapped on first touch by
# both of torch's threads at once, and small windows make them contend: 4M elements took
# 180-300 ms per 150M, 32M elements 40 ms (the floor: 30). Larger windows would keep more of
# an update mapped (counted as the coordinator's memory) before it is let go.
FOLD_BLOCK = 1 << 25
# Several spooled updates ready at once (arrived out of order, or left for the round's close)
# are folded together, window by window: each window of the sums (at most 8 MiB of float32)
# stays in the CPU's cache while every update adds to it, so the sums are read and written
# once for them all rather than once each (bench/server_round.py). At most MANY_BYTES of
# them, and an eighth of the adapter's size (or a chunk), is mapped at a time: MANY_UPDATES
# updates at most per pass, in windows that shrink as they are more, and as many as fit a
# chunk each carried by a live fold.
MANY_BLOCK = 1 << 21
MANY_BYTES = 64 << 20
MANY_UPDATES = 16
# Elements per [K, B] block of the coordinate rules: K rows of it stay in cache.
STACK_BLOCK = 1 << 18


@dataclass(frozen=True)
class AggregationRule:
    """How a round's updates combine into its delta (the run's robust options)."""

    aggregator: str = "mean"  # mean, trimmed_mean, median, krum or multi_krum
    max_weight_share: float = 1.0  # largest share of the round's weight one update carries
    trim_fraction: float = 0.1  # trimmed_mean: dropped at each end of every coordinate
    byzantine_silos: int = 1  # krum / multi_krum: f
    multi_krum_keep: int = 0  # multi_krum: updates kept (0: K - f)
    clip_norm: float = 0.0  # fixed L2 bound per update (0: off)
    clip_median_factor: float = 0.0  # L2 bound as a multiple of the median norm (0: off)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> AggregationRule:
        return cls(**{name: getattr(spec, name) for name in cls.__dataclass_fields__})

    @property
    def incremental(self) -> bool:
        """Whether each update's contribution is known when it arrives."""
        return (
            self.aggregator == "mean"
            and self.max_weight_share >= 1
            and self.clip_median_factor == 0
        )


@dataclass(frozen=True)
class Arrival:
    """One accepted update waiting in its spool, with its weight in the round."""

    update: ReceivedUpdate
    weight: float
    num_samples: int
    steps: int


@dataclass
class FoldOutcome:
    """What the rules did: for the round's record and the log."""

    contributed: list[str]
    clipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # not selected by Krum


class RoundFold:
    """The updates of one round attempt, folded into `aggregate` in canonical order."""

    def __init__(
        self,
        *,
        aggregate: RoundAggregate,
        rule: AggregationRule,
        selected: list[str],
        shape: UpdateShape,
    ) -> None:
        self.aggregate = aggregate
        self._rule = rule
        self._shape = shape
        self._order = sorted(selected)
        self._arrivals: dict[str, Arrival] = {}
        self._next = 0  # position in the order up to which updates are folded
        self._initial_stale = set(aggregate.stale)
        # Live folds: _live_lock guards these three; _next only changes under the callers'
        # serialisation, and a grant reads it under _live_lock (see _grant).
        self._live_lock = threading.Lock()
        # Held from a live fold's removal from _live until it is revoked and, if it added
        # anything, the sums are marked dirty: a finish or an add that reads _dirty then
        # cannot miss it, nor rebuild while it still adds.
        self._undo_lock = threading.Lock()
        self._live: dict[str, LiveFold] = {}
        self._live_allowed = rule.incremental and rule.clip_norm == 0
        self._dirty = False  # a revoked live fold left part of its update in the sums
        self._prefolded: set[str] = set()  # complete in the sums through a live fold
        self._arrived_live: set[str] = set()  # of those, folded as they streamed in
        self.dtype = shape.dtype  # of the spooled values (Sums)
        self.rebuilds = 0  # of the sums, after a live fold was abandoned

    def offer(self, silo_id: str, weight: float) -> LiveFold | None:
        """A live fold for an update about to stream in, or None where the rule needs the
        whole update first (clipping, robust rules) or a live fold failed this attempt."""
        with self._live_lock:
            if (
                not self._live_allowed
                or silo_id not in self._order
                or silo_id in self._live  # (a second stream of one silo at once)
                or silo_id in self._arrivals  # (admission refuses it: never folded twice)
            ):
                return None
            live = self._live[silo_id] = LiveFold(self, silo_id, weight)
            self._grant()
            return live

    def abandon(self, live: LiveFold) -> None:
        """The update of `live` was refused or its stream failed."""
        with self._undo_lock:
            with self._live_lock:
                if self._live.get(live.silo_id) is live:
                    del self._live[live.silo_id]
            self._undo(live)

    def _undo(self, live: LiveFold) -> None:
        """Revoke `live`; if the sums hold any of it, they are rebuilt before the next fold
        and nothing more is folded live this attempt."""
        _, touched = live.revoke()
        if touched:
            with self._live_lock:
                self._dirty, self._live_allowed = True, False
            log.info("the live fold of %s was abandoned; the sums are rebuilt", live.silo_id)

    def _grant(self) -> None:
        """Give the sums to the next update in the order if it is streaming in."""
        position = self._next
        if self._live_allowed and not self._dirty and position < len(self._order):
            live = self._live.get(self._order[position])
            if live is not None:
                live.grant()

    def _revoke_all(self) -> None:
        with self._undo_lock:  # (an abandon under way is done first)
            with self._live_lock:
                lives, self._live = list(self._live.values()), {}
                self._live_allowed = False
            for live in lives:  # each may wait for a receiver's add: not under _live_lock
                self._undo(live)

    def _repair(self) -> None:
        """After an abandoned live fold: the sums again as the updates before it left them."""
        with self._live_lock:
            dirty, self._dirty = self._dirty, False
        if not dirty:
            return
        folded = [self._arrivals[n] for n in self._order[: self._next] if n in self._arrivals]
        log.info("the round's sums are rebuilt from %d spooled update(s)", len(folded))
        self.rebuilds += 1
        self._prefolded.clear()  # every update so far is folded again, from its spool
        self._arrived_live.clear()
        aggregate = self.aggregate
        aggregate.stale, aggregate.weight_sum = set(self._initial_stale), 0.0
        self._fold(folded)

    def add(self, silo_id: str, arrival: Arrival, *, live: LiveFold | None = None) -> None:
        """Take an accepted update (`live`: the live fold of the very stream it arrived
        by, if it had one); fold what the canonical order allows. Callers serialise."""
        with self._undo_lock:
            with self._live_lock:
                registered = self._live.pop(silo_id, None)
            if registered is not None and registered is not live:
                self._undo(registered)  # another stream of this silo's: what it added goes
        if live is not None:
            folded, touched = live.revoke()
            carried = all(self._arrivals.get(c.name) is c.token for c in live.carried)
            whole = folded == self._shape.numel and live.weight == arrival.weight
            if touched and whole and carried:
                self._prefolded.add(silo_id)  # already in the sums, all of it
                self._arrived_live.add(silo_id)
                self._prefolded.update(c.name for c in live.carried)  # and those it carried
            elif touched:  # part of it, or at another weight: never from a receiver
                with self._live_lock:
                    self._dirty, self._live_allowed = True, False
        self._repair()  # (after a rebuild this update, too, is folded from its spool)
        self._arrivals[silo_id] = arrival
        if not self._rule.incremental:
            return
        order = self._order
        while True:
            ready = self._next  # the updates ready in a row, then folded together
            while (
                ready < len(order) and order[ready] in self._arrivals
                and order[ready] not in self._prefolded
            ):  # fmt: skip
                ready += 1
            self._fold([self._arrivals[n] for n in order[self._next : ready]])
            self._next = ready  # once they are in the sums: a grant reads it (_grant)
            if ready == len(order) or order[ready] not in self._prefolded:
                break
            self._account(self._arrivals[order[ready]].weight, self._buffers())
            self._next += 1
        with self._live_lock:
            self._grant()

    def carried_after(self, silo_id: str) -> list[Carried]:
        """The accepted updates right after `silo_id` in the order (the next one, granted a
        live fold, as it begins adding): none is folded yet, and none can be until it is."""
        position, carried = self._order.index(silo_id) + 1, list[Carried]()
        chunk = min(CHUNK_BYTES, self._shape.numel * self._shape.itemsize)  # mapped of each
        most = min(MANY_UPDATES - 1, self._mapped_most // chunk)
        while position < len(self._order) and len(carried) < most:
            name = self._order[position]
            arrival = self._arrivals.get(name)
            if arrival is None:
                break
            alpha = arrival.weight * self._fixed_scale(arrival)
            carried.append(Carried(name, arrival.update.path, alpha, token=arrival))
            position += 1
        return carried

    @property
    def folded_live(self) -> int:
        """Accepted updates that were folded as they streamed in."""
        return len(self._arrived_live)

    @property
    def folded_carried(self) -> int:
        """Accepted updates added along with the live fold of the one before them."""
        return len(self._prefolded - self._arrived_live)

    def _fixed_scale(self, arrival: Arrival) -> float:
        (scale,) = robust.clip_scales(
            [arrival.update.norm], bound=self._rule.clip_norm, median_factor=0.0
        )
        return scale

    def finish(self) -> FoldOutcome:
        """Fold what is left by the rule, fill the aggregate's counts, and say what happened."""
        self._revoke_all()  # updates still streaming in are too late for this round
        self._repair()
        outcome = self._finish()
        for name in self.aggregate.stale:  # nothing was folded into it
            getattr(self.aggregate, name).zero_()
        self.aggregate.stale.clear()
        return outcome

    def _finish(self) -> FoldOutcome:
        names = [s for s in self._order if s in self._arrivals]
        arrivals = [self._arrivals[s] for s in names]
        aggregate = self.aggregate
        aggregate.samples = sum(a.num_samples for a in arrivals)
        aggregate.sample_steps = float(sum(a.num_samples * a.steps for a in arrivals))
        aggregate.updates = len(arrivals)
        rule = self._rule
        scales = robust.clip_scales(
            [a.update.norm for a in arrivals],
            bound=rule.clip_norm,
            median_factor=rule.clip_median_factor,
        )
        outcome = FoldOutcome(
            contributed=names, clipped=[n for n, s in zip(names, scales, strict=True) if s < 1]
        )
        if rule.incremental:
            left = [self._arrivals[n] for n in self._order[self._next :] if n in self._arrivals]
            self._fold(left)
            self._next = len(self._order)
            return outcome
        if rule.aggregator in ("trimmed_mean", "median"):
            self._coordinate_rule(arrivals, scales)
            aggregate.weight_sum = 1.0
            return outcome
        keep = list(range(len(arrivals)))
        if rule.aggregator in ("krum", "multi_krum"):
            keep = self._krum(arrivals, scales)
            outcome.excluded = [n for i, n in enumerate(names) if i not in keep]
        weights = robust.capped_weights([arrivals[i].weight for i in keep], rule.max_weight_share)
        self._fold(
            [arrivals[i] for i in keep],
            alphas=[w * scales[i] for i, w in zip(keep, weights, strict=True)],
            weights=weights,
        )
        return outcome

    def _fold(
        self,
        arrivals: list[Arrival],
        *,
        alphas: list[float] | None = None,
        weights: list[float] | None = None,
    ) -> None:
        """Add spooled updates in place from their files, in the order given: adapter values
        times their alpha (by default, weight times the fixed clipping scale) into the sum,
        control values as they are into the control sum."""
        if alphas is None:
            alphas = [a.weight * self._fixed_scale(a) for a in arrivals]
        if weights is None:
            weights = [a.weight for a in arrivals]
        for first in range(0, len(arrivals), MANY_UPDATES):
            batch = slice(first, first + MANY_UPDATES)
            self.fold_spooled(
                [a.update.path for a in arrivals[batch]], alphas[batch], stop=self._shape.numel
            )
            for weight in weights[batch]:
                self._account(weight, self._buffers())

    @property
    def _mapped_most(self) -> int:
        """Bytes of waiting updates mapped at once, at most (a chunk's worth at least; an
        eighth of the adapter counted in float32, as its memory is)."""
        return min(MANY_BYTES, max(CHUNK_BYTES, self._shape.numel * 4 // 8))

    def _buffers(self) -> set[str]:
        return {"control_total" if run.control else "total" for run in self._shape.runs}

    def _account(self, weight: float, written: set[str]) -> None:
        """An update is in the sums: every run of it together covers its buffers."""
        self.aggregate.stale -= written
        self.aggregate.weight_sum += weight

    def fold_spooled(self, paths: Sequence[Path], alphas: Sequence[float], *, stop: int) -> None:
        """Add elements [0, stop) of the updates spooled in `paths` to the sums (whole ones,
        or what a live fold catches up on), in one pass over them, in the order given (bit
        for bit as one after another)."""
        if stop <= 0 or not paths:
            return
        window = FOLD_BLOCK
        if len(paths) > 1:  # whole pages of each
            fits = self._mapped_most // (len(paths) * self._shape.itemsize) // PAGE * PAGE
            window = min(MANY_BLOCK, max(PAGE, fits))
        with contextlib.ExitStack() as opened:
            spools = [
                opened.enter_context(SpoolView(path, self._shape.dtype, elements=stop))
                for path in paths
            ]
            for run in self._shape.runs:
                for start in range(0, min(run.count, stop - run.start), window):
                    count = min(window, run.count - start, stop - run.start - start)
                    element = run.start + start
                    values = [spool.values(element, count) for spool in spools]
                    self.add_values(
                        element, values[0], alpha=alphas[0], more=values[1:], more_alphas=alphas[1:]
                    )
                    del values
                    for spool in spools:
                        spool.release(element, count)

    def add_values(
        self,
        element: int,
        values: torch.Tensor,
        *,
        alpha: float,
        measuring: bool = False,
        more: Sequence[torch.Tensor] = (),
        more_alphas: Sequence[float] = (),
    ) -> torch.Tensor | None:
        """Add data elements [element, element + len) (within one run) to their sum:
        adapter values times `alpha`, control values as they are; then the same elements of
        the updates in `more`, each times its alpha, while that stretch is in the cache. A
        buffer no fold has written yet this round is written instead (its earlier round's
        values are stale). `measuring` (whole blocks of 16-bit values): return each block's
        norm of `values` as well."""
        run = self._shape.run_at(element)
        name = "control_total" if run.control else "total"
        at = run.target + element - run.start
        target = getattr(self.aggregate, name)[at : at + values.numel()]
        write = name in self.aggregate.stale
        scales = [1.0] * (len(more) + 1) if run.control else [alpha, *more_alphas]
        norms = None
        if measuring:
            norms = add_measured(target, values, scales[0], write=write)
        else:
            add_scaled(target, values, scales[0], write=write)
        if more:
            add_many(target, more, scales[1:], write=False)
        return norms

    def _stacked(
        self, arrivals: list[Arrival], scales: list[float]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(adapter offset, [K, B] block) over the adapter values of every update, each row
        scaled by its clipping factor."""
        stack = torch.empty(len(arrivals), STACK_BLOCK, dtype=torch.float32)
        with contextlib.ExitStack() as opened:
            spools = [
                opened.enter_context(SpoolView(a.update.path, self._shape.dtype)) for a in arrivals
            ]
            for run in (r for r in self._shape.runs if not r.control):
                for start in range(0, run.count, STACK_BLOCK):
                    n = min(STACK_BLOCK, run.count - start)
                    for row, (spool, scale) in enumerate(zip(spools, scales, strict=True)):
                        stack[row, :n].copy_(spool.values(run.start + start, n)).mul_(scale)
                        spool.release(run.start + start, n)
                    yield run.target + start, stack[:, :n]

    def _coordinate_rule(self, arrivals: list[Arrival], scales: list[float]) -> None:
        trim = robust.trimmed_count(len(arrivals), self._rule.trim_fraction)
        for start, block in self._stacked(arrivals, scales):
            if self._rule.aggregator == "median":
                combined = robust.coordinate_median(block)
            else:
                combined = robust.trimmed_mean(block, trim)
            self.aggregate.total[start : start + combined.numel()].copy_(combined)
        self.aggregate.stale.discard("total")

    def _krum(self, arrivals: list[Arrival], scales: list[float]) -> list[int]:
        gram = torch.zeros(len(arrivals), len(arrivals), dtype=torch.float64)
        for _, block in self._stacked(arrivals, scales):
            gram += robust.gram_block(block)
        f = self._rule.byzantine_silos
        scores = robust.krum_scores(robust.squared_distances(gram), f)
        keep = 1
        if self._rule.aggregator == "multi_krum":
            keep = self._rule.multi_krum_keep or len(arrivals) - f
        return robust.krum_select(scores, keep)

    def discard(self) -> None:
        """Hand every spooled update of this attempt back to its pool."""
        self._revoke_all()  # the sums are the next attempt's
        for arrival in self._arrivals.values():
            path = Path(arrival.update.path)
            SpoolPool.at(path.parent).give_back(path)
        release_freed()  # what the round's transfers and folds freed
