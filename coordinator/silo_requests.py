"""The silos' side of a round: downloads, updates and evaluation reports, under the lock.

A mixin of Federation (coordinator/federation.py), which owns the state named below.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import grpc

from coordinator.aggregation.fold import Arrival
from coordinator.aggregation.live import LiveFold
from coordinator.aggregation.receiver import ReceivedUpdate
from coordinator.aggregation.shape import UpdateShape
from coordinator.base_model import check_weights
from coordinator.checkpoint import CheckpointFull, CheckpointStore
from coordinator.global_model import GlobalModel
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import SiloRegistry
from coordinator.rounds import Contribution, EvaluationResult, OpenRound, Refusal
from coordinator.run_state import RunRecord
from coordinator.validation import max_local_steps, validate_update_meta
from shared.bounded import printable
from shared.errors import TASK_FAILURE_REASONS
from shared.wire.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)


class SiloRequests:
    """Request handlers shared by the gRPC threads; every touch of a round holds `_lock`."""

    _lock: threading.Lock
    _changed: threading.Condition
    open_round: OpenRound | None
    model: GlobalModel | None
    run: RunRecord | None
    registry: SiloRegistry
    metrics: CoordinatorMetrics
    store: CheckpointStore

    def round_for_task(self, task_id: str, silo_id: str) -> OpenRound:
        with self._lock:
            return self._round_of(task_id, silo_id)

    def _round_of(self, task_id: str, silo_id: str) -> OpenRound:
        """The open round `task_id` belongs to (caller holds the lock); a Refusal otherwise."""
        open_round = self.open_round
        if open_round is None:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {printable(task_id)!r} of {silo_id!r} is late: no round is open",
                reason="late",
            )
        open_round.check_task(task_id, silo_id)
        return open_round

    def unanswered_task(self, silo_id: str) -> pb.RoundTask | None:
        with self._lock:
            return None if self.open_round is None else self.open_round.unanswered_task(silo_id)

    def count_sent(self, open_round: OpenRound, nbytes: int, silo_id: str) -> None:
        with self._lock:
            open_round.bytes_sent += nbytes
            open_round.reach(silo_id, "downloaded")
        self.metrics.bytes_sent.inc(nbytes)
        self.metrics.silo_bytes_sent.labels(silo=silo_id).inc(nbytes)

    def spool_full(
        self, open_round: OpenRound | None, directory: Path, needed: int
    ) -> CheckpointFull:
        """An update found no room: the round ends now and the run pauses until there is room
        (then the round is redone). What to tell the silo."""
        full = CheckpointFull(directory, needed=needed, free=self.store.bytes_free())
        if open_round is not None:
            with self._lock:
                open_round.disk_full = open_round.disk_full or full
                self._changed.notify_all()
        return full

    def reject(self, open_round: OpenRound | None, reason: str) -> None:
        self.metrics.updates_rejected.labels(reason=reason).inc()
        if open_round is not None:
            with self._lock:
                open_round.rejected += 1

    def check_declared_samples(self, num_train_samples: int, *, hard_cap: int) -> None:
        """A Join's sample count: never above the coordinator's hard cap, nor above the
        running run's cap (a count is a weight in the round's mean)."""
        cap = hard_cap
        with self._lock:
            if self.run is not None and self.run.phase.active:
                cap = min(cap, self.run.spec.max_samples_per_silo)
        if num_train_samples > cap:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{num_train_samples} training samples declared; at most {cap} are accepted "
                "per silo",
            )

    def check_join_weights(self, silo_id: str, reported: str) -> None:
        """A joining silo's base weights against the run's pin (the first report pins it)."""
        with self._lock:
            run = self.run
            pin = check_weights(run, silo_id, reported)
            if pin and run is not None:
                run.base_model_weights_fingerprint = reported
        if pin and run is not None:
            log.info("run %s pinned to base weights %s (from %s)", run.run_id, reported, silo_id)
            self.store.try_update_run(run)
        if not reported:
            self.registry.note(silo_id, "did not report its base weights' fingerprint")

    def check_update_header(
        self, open_round: OpenRound, silo_id: str, header: pb.UpdateHeader
    ) -> None:
        """The header's numbers, before a byte of the update is received."""
        assert self.run is not None
        spec = self.run.spec
        validate_update_meta(
            num_samples=header.num_samples,
            declared_samples=self.registry.declared_samples(silo_id),
            max_samples=spec.max_samples_per_silo,
            steps=header.steps,
            max_steps=max_local_steps(
                num_samples=header.num_samples,
                batch_size=spec.batch_size,
                local_epochs=spec.local_epochs,
            ),
            mean_loss=header.mean_loss,
            gamma=header.gamma,
            gamma_max=spec.gamma_max,
        )
        with self._lock:
            open_round.reach(silo_id, "uploading")

    def update_shape(self) -> UpdateShape:
        assert self.model is not None and self.run is not None
        return self.model.update_shape(self.run.spec.wire_dtype)

    def live_fold(
        self, open_round: OpenRound, silo_id: str, header: pb.UpdateHeader
    ) -> LiveFold | None:
        """The round's live fold for this update (folded as it streams in while it is next
        in the canonical order), if the run's rules allow one."""
        assert self.model is not None
        if open_round.fold is None:
            return None
        weight = self.model.strategy.update_weight(
            num_samples=header.num_samples, steps=header.steps
        )
        return open_round.fold.offer(silo_id, weight)

    def admit_update(self, *, open_round: OpenRound, silo_id: str, header: pb.UpdateHeader) -> None:
        """Reserve the round's place for a received, verified update (Refusal if the round
        closed meanwhile); from here a closing round waits until the update is folded."""
        with self._lock:
            # may have closed meanwhile; an evaluation task takes no update
            open_round.check_task(header.task_id, silo_id, kind=pb.TASK_KIND_TRAIN)
            open_round.folding.add(silo_id)

    def fold_update(
        self,
        *,
        open_round: OpenRound,
        silo_id: str,
        header: pb.UpdateHeader,
        update: ReceivedUpdate,
        live: LiveFold | None = None,
    ) -> None:
        """Hand an admitted update to the round's fold (a worker thread, once the silo has
        its receipt; `live`: the live fold of the stream it came by); its spool then belongs
        to the fold. A fold that fails leaves part of the update in the running sum: the
        round's attempt is marked failed and redone."""
        model = self.model
        assert model is not None
        accepted = False
        try:
            fold = open_round.fold
            assert fold is not None  # a training round
            weight = model.strategy.update_weight(
                num_samples=header.num_samples, steps=header.steps
            )
            arrival = Arrival(
                update=update, weight=weight, num_samples=header.num_samples, steps=header.steps
            )
            with open_round.fold_lock:
                started = time.perf_counter()
                fold.add(silo_id, arrival, live=live)
                spent = time.perf_counter() - started
            # what was added as it streamed in, and the updates it carried, count too
            spent += live.seconds if live is not None else 0.0
            self.metrics.phase_duration.labels(phase="fold").observe(spent)
            accepted = True
        except Exception as exc:  # the receipt is sent: nobody else to tell
            log.error(
                "round %d: folding the update from %s failed (%s: %s); the attempt is redone",
                open_round.index,
                silo_id,
                type(exc).__name__,
                exc,
            )
            with self._lock:
                open_round.fold_failures[silo_id] = f"{type(exc).__name__}: {exc}"
        finally:
            self._folded(open_round, silo_id, header, update, accepted=accepted)

    def _folded(
        self,
        open_round: OpenRound,
        silo_id: str,
        header: pb.UpdateHeader,
        update: ReceivedUpdate,
        *,
        accepted: bool,
    ) -> None:
        with self._lock:
            open_round.folding.discard(silo_id)
            if accepted:
                open_round.reach(silo_id, "uploaded")
                open_round.contributed[silo_id] = Contribution(
                    num_samples=header.num_samples,
                    mean_loss=header.mean_loss,
                    steps=header.steps,
                    gamma=header.gamma,
                )
                open_round.bytes_received += update.nbytes
            self._changed.notify_all()
        if not accepted:
            return
        nbytes = update.nbytes
        self.metrics.updates_accepted.inc()
        self.metrics.bytes_received.inc(nbytes)
        self.metrics.silo_bytes_received.labels(silo=silo_id).inc(nbytes)
        self.metrics.silo_gamma.labels(silo=silo_id).set(header.gamma)
        log.info(
            "round %d: update from %s accepted (%d samples, loss %.4f)",
            open_round.index,
            silo_id,
            header.num_samples,
            header.mean_loss,
        )

    def accept_failure(self, *, silo_id: str, report: pb.FailureReport) -> None:
        """A selected silo cannot carry out its task: the round stops waiting for it."""
        cause = report.reason if report.reason in TASK_FAILURE_REASONS else "exception"
        detail = printable(report.detail, limit=300)
        with self._lock:
            open_round = self._round_of(report.task_id, silo_id)
            open_round.failures[silo_id] = f"{cause}: {detail}"
            open_round.reach(silo_id, "failed")
            self._changed.notify_all()
        self.metrics.silo_failures.labels(reason=cause).inc()
        log.warning(
            "round %d: silo %s cannot carry out its task (%s): %s",
            open_round.index,
            silo_id,
            cause,
            detail,
        )

    def accept_report(self, *, silo_id: str, report: pb.EvaluationReport) -> None:
        """Record one silo's evaluation of an evaluation round's adapter."""
        open_round = self.round_for_task(report.task_id, silo_id)
        declared = self.registry.declared_test_samples(silo_id)
        if not 1 <= report.num_samples <= declared:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"num_samples {report.num_samples} outside 1..{declared} (declared)",
            )
        bad = [k for k, v in report.metrics.items() if not math.isfinite(v)]
        if bad:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"non-finite metric {bad[0]!r}")
        with self._lock:
            open_round.check_task(report.task_id, silo_id, kind=pb.TASK_KIND_EVALUATE)
            open_round.reach(silo_id, "evaluated")
            open_round.reports[silo_id] = EvaluationResult(
                num_samples=report.num_samples, metrics=dict(report.metrics)
            )
            self._changed.notify_all()
        log.info(
            "round %d: evaluation from %s: %s",
            open_round.index,
            silo_id,
            ", ".join(f"{k} {v:.4f}" for k, v in sorted(report.metrics.items())),
        )
