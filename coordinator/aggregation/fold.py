"""Folding a round's spooled updates into its delta, in an order that arrival cannot change.

Updates are folded in the order of the selected silos' names, never in the order they
arrive: a weighted mean folds each update as soon as every silo before it in that order has
been folded (so most of the work still happens while others upload), and the rest when the
round closes. Float sums then come out bit for bit the same whatever the network did.
The update that is next in that order while it streams in is folded live instead, carrying
along the accepted updates that wait right after it (coordinator/aggregation/live.py); updates
ready at once otherwise are folded together (coordinator/aggregation/sums.py). If a live
update is refused, or the round closes first, the sums are rebuilt from the spools of the
updates before it and live folding stops for the rest of the attempt: a silo can cost the
round one rebuild, never more.
Rules that need every update at once (weight-share caps, median-relative clipping, trimmed
mean, median, Krum) run when the round closes, block by block over the spooled files, so that
memory holds a block of each update rather than K whole updates.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator.aggregation import robust
from coordinator.aggregation.heap import release_freed
from coordinator.aggregation.live import Carried, LiveFold
from coordinator.aggregation.receiver import ReceivedUpdate
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.spool import SpoolPool
from coordinator.aggregation.sums import RoundSums
from coordinator.run_state import RunSpec
from coordinator.strategies import RoundAggregate

log = logging.getLogger(__name__)


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
        self.sums = RoundSums(aggregate=aggregate, shape=shape)
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
            live = self._live[silo_id] = LiveFold(
                self.sums, silo_id, weight, waiting=self.carried_after
            )
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
            self.sums.account(self._arrivals[order[ready]].weight)
            self._next += 1
        with self._live_lock:
            self._grant()

    def carried_after(self, silo_id: str) -> list[Carried]:
        """The accepted updates right after `silo_id` in the order (the next one, granted a
        live fold, as it begins adding): none is folded yet, and none can be until it is."""
        position, carried = self._order.index(silo_id) + 1, list[Carried]()
        most = self.sums.carried_most
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
        self.sums.fold_whole([a.update.path for a in arrivals], alphas, weights)

    def _coordinate_rule(self, arrivals: list[Arrival], scales: list[float]) -> None:
        trim = robust.trimmed_count(len(arrivals), self._rule.trim_fraction)
        for start, block in self.sums.stacked([a.update.path for a in arrivals], scales):
            if self._rule.aggregator == "median":
                combined = robust.coordinate_median(block)
            else:
                combined = robust.trimmed_mean(block, trim)
            self.aggregate.total[start : start + combined.numel()].copy_(combined)
        self.aggregate.stale.discard("total")

    def _krum(self, arrivals: list[Arrival], scales: list[float]) -> list[int]:
        gram = torch.zeros(len(arrivals), len(arrivals), dtype=torch.float64)
        for _, block in self.sums.stacked([a.update.path for a in arrivals], scales):
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
