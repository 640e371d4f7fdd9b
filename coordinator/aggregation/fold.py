"""Folding a round's spooled updates into its delta, in an order that arrival cannot change.

Updates are folded in the order of the selected silos' names, never in the order they
arrive: a weighted mean folds each update as soon as every silo before it in that order has
been folded (so most of the work still happens while others upload), and the rest when the
round closes. Float sums then come out bit for bit the same whatever the network did.
Rules that need every update at once (weight-share caps, median-relative clipping, trimmed
mean, median, Krum) run when the round closes, block by block over the spooled files, so that
memory holds a block of each update rather than K whole updates.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator.aggregation import robust
from coordinator.aggregation.heap import release_freed
from coordinator.aggregation.kernels import add_scaled
from coordinator.aggregation.receiver import ReceivedUpdate
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.spool import SpoolPool, SpoolView
from coordinator.run_state import RunSpec
from coordinator.strategies import RoundAggregate

log = logging.getLogger(__name__)

# Elements folded per call. The pages of a spool just written are mapped on first touch by
# both of torch's threads at once, and small windows make them contend: 4M elements took
# 180-300 ms per 150M, 32M elements 40 ms (the floor: 30). Larger windows would keep more of
# an update mapped (counted as the coordinator's memory) before it is let go.
FOLD_BLOCK = 1 << 25
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

    def add(self, silo_id: str, arrival: Arrival) -> None:
        """Take an accepted update; fold what the canonical order allows. Callers serialise."""
        self._arrivals[silo_id] = arrival
        if not self._rule.incremental:
            return
        while self._next < len(self._order) and self._order[self._next] in self._arrivals:
            ready = self._arrivals[self._order[self._next]]
            self._fold(ready, alpha=ready.weight * self._fixed_scale(ready))
            self._next += 1

    def _fixed_scale(self, arrival: Arrival) -> float:
        (scale,) = robust.clip_scales(
            [arrival.update.norm], bound=self._rule.clip_norm, median_factor=0.0
        )
        return scale

    def finish(self) -> FoldOutcome:
        """Fold what is left by the rule, fill the aggregate's counts, and say what happened."""
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
            for name in self._order[self._next :]:
                if name in self._arrivals:
                    arrival = self._arrivals[name]
                    self._fold(arrival, alpha=arrival.weight * self._fixed_scale(arrival))
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
        for i, weight in zip(keep, weights, strict=True):
            self._fold(arrivals[i], alpha=weight * scales[i], weight=weight)
        return outcome

    def _fold(self, arrival: Arrival, *, alpha: float, weight: float | None = None) -> None:
        """Add one spooled update in place from its file: adapter values times `alpha` into
        the sum, control values as they are into the control sum."""
        aggregate = self.aggregate
        written = set()
        with SpoolView(arrival.update.path, self._shape.dtype) as spool:
            for run in self._shape.runs:
                name = "control_total" if run.control else "total"
                target = getattr(aggregate, name)
                scale, write = (1.0 if run.control else alpha), name in aggregate.stale
                for start in range(0, run.count, FOLD_BLOCK):
                    count, at = min(FOLD_BLOCK, run.count - start), run.target + start
                    values = spool.values(run.start + start, count)
                    add_scaled(target[at : at + count], values, scale, write=write)
                    del values
                    spool.release(run.start + start, count)
                written.add(name)
        aggregate.stale -= written  # every run of an update together covers its buffers
        aggregate.weight_sum += arrival.weight if weight is None else weight

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
        for arrival in self._arrivals.values():
            path = Path(arrival.update.path)
            SpoolPool.at(path.parent).give_back(path)
        release_freed()  # what the round's transfers and folds freed
