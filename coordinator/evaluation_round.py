"""Evaluation rounds: the global adapter evaluated by every silo that holds a test split.

A mixin of Federation (coordinator/federation.py), which owns the state named below.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from coordinator.checkpoint import CheckpointStore
from coordinator.global_model import GlobalModel
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import SiloRegistry
from coordinator.rounds import OpenRound, weighted_means
from coordinator.run_state import RunRecord
from coordinator.schedule import training_plan

log = logging.getLogger(__name__)


class EvaluationRounds:
    _lock: threading.Lock
    open_round: OpenRound | None
    model: GlobalModel | None
    registry: SiloRegistry
    store: CheckpointStore
    metrics: CoordinatorMetrics

    if TYPE_CHECKING:  # the run loop's

        def _collect(self, open_round: OpenRound, *, phase: str = "training") -> None: ...

    def _evaluate(self, run: RunRecord, index: int) -> None:
        """Every connected silo with a test split evaluates round `index`'s adapter; the
        sample-weighted means are kept with the round's record and exported as metrics."""
        assert self.model is not None
        evaluators = self.registry.evaluators()
        if not evaluators:
            log.warning("round %d: no connected silo holds a test split; no evaluation", index)
            return
        open_round = OpenRound.open(
            run_id=run.run_id,
            index=index,
            attempt=0,
            selected=evaluators,
            download=self.model.adapter(),
            fold=None,
            deadline_s=run.spec.round_deadline_s,
        )
        plan = training_plan(run.spec, index)
        with self._lock:
            self.open_round = open_round
            for silo_id in evaluators:
                self.registry.send(silo_id, open_round.task_for(silo_id, plan))
        with self.metrics.phase_duration.labels(phase="evaluation").time():
            self._collect(open_round, phase="evaluation")
        means = weighted_means(list(open_round.reports.values()))
        with self._lock:
            self.open_round = None
            run.history[-1] = replace(
                run.history[-1], evaluation=means, evaluated_by=sorted(open_round.reports)
            )
            self.store.update_run(run)
        for name, value in means.items():
            self.metrics.evaluation.labels(metric=name).set(value)
        log.info(
            "round %d: evaluated by %d silo(s): %s",
            index,
            len(open_round.reports),
            ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items())),
        )
