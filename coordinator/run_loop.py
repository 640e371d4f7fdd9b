"""The run loop: rounds of one run, from waiting for silos to the saved checkpoint.

A mixin of Federation (coordinator/federation.py), which owns the state named below. Runs in
its own thread. A round is never given up for want of silos unless the admin set a give-up
time: attempts that fall short are reselected without the silos that missed them, stragglers
are asked last for a while, and a full disk pauses the run until there is room again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from coordinator.aggregation.fold import AggregationRule, RoundFold
from coordinator.aggregation.spool import INCOMING, SpoolPool
from coordinator.checkpoint import CheckpointFull, CheckpointStore
from coordinator.global_model import GlobalModel
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import SiloRegistry
from coordinator.rounds import OpenRound
from coordinator.run_state import RoundRecord, RunPhase, RunRecord
from coordinator.schedule import training_plan
from coordinator.selection import STRAGGLER_ROUNDS, choose, round_rng, waiting_reason
from shared.wire.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)


class RoundGaveUp(Exception):
    """A round waited for silos longer than the run's give-up time."""


class RunLoop:
    _lock: threading.Lock
    _changed: threading.Condition
    _stop: threading.Event
    registry: SiloRegistry
    store: CheckpointStore
    metrics: CoordinatorMetrics
    model: GlobalModel | None
    run: RunRecord | None
    open_round: OpenRound | None
    phase: pb.RoundPhase
    waiting_reason: str
    poll_s: float
    selection_grace_s: float

    if TYPE_CHECKING:  # provided by Federation and EvaluationRounds

        def _finish(self, run: RunRecord, phase: RunPhase, message: str) -> None: ...
        def _wait_while_paused(self, run: RunRecord) -> bool: ...
        def _restore_model(self, run: RunRecord) -> None: ...
        def _evaluate(self, run: RunRecord, index: int) -> None: ...

    def _run_loop(self) -> None:
        run = self.run
        assert run is not None
        try:
            while run.completed_rounds < run.spec.rounds and not self._stop.is_set():
                if not self._wait_while_paused(run):
                    break
                index = run.completed_rounds + 1
                if not self._play_round(run, index):
                    continue  # stopped, or paused for want of disk: the loop decides
                every = run.spec.eval_every
                due = index == run.spec.rounds or index % max(every, 1) == 0
                if every and due:
                    self._evaluate(run, index)
            if run.completed_rounds >= run.spec.rounds:
                self._finish(run, RunPhase.COMPLETED, f"{run.completed_rounds} rounds completed")
            elif self.run is run and run.phase.active and self._stop_requested:
                self._finish(
                    run,
                    RunPhase.STOPPED,
                    f"stopped by the admin after round {run.completed_rounds}",
                )
        except RoundGaveUp as exc:
            self._finish(run, RunPhase.FAILED, str(exc))
        except Exception as exc:
            log.exception("run %s failed", run.run_id)
            self._finish(run, RunPhase.FAILED, f"round {run.completed_rounds + 1}: {exc}")

    @property
    def _stop_requested(self) -> bool:
        return self._stop.is_set() and not self.registry.closed.is_set()

    def _eligible(self, run: RunRecord, skip: set[str]) -> tuple[list[str], list[str]]:
        """(silos that may be selected, silos passed over for their declared sample count)."""
        cap = run.spec.max_samples_per_silo
        pinned = run.base_model_weights_fingerprint
        weights = self.registry.weights_fingerprints() if pinned else {}
        eligible, over = [], []
        for silo in self.registry.available():
            if self.registry.declared_samples(silo) > cap:
                over.append(silo)
            elif silo not in skip and weights.get(silo, pinned) == pinned:
                eligible.append(silo)
        return eligible, over

    def _await_silos(self, run: RunRecord, index: int, skip: set[str]) -> list[str] | None:
        """Silos to select from: K of them, or at least min_silos after the grace period.
        Waits as long as it takes (or the run's give-up time), saying why; None if stopped."""
        spec = run.spec
        self.phase = pb.ROUND_PHASE_WAITING_FOR_SILOS
        waited_from, said = time.monotonic(), ""
        with self._lock:
            while not self._stop.is_set() and run.phase is RunPhase.RUNNING:
                eligible, over = self._eligible(run, skip)
                waited = time.monotonic() - waited_from
                if len(eligible) >= spec.silos_per_round or (
                    waited >= self.selection_grace_s and len(eligible) >= spec.min_silos
                ):
                    self.waiting_reason = ""
                    self.metrics.silos_missing.set(0)
                    return eligible
                if skip and waited >= self.selection_grace_s:
                    skip = set()  # passing over is a preference: never wait on it
                    continue
                why = waiting_reason(
                    eligible=len(eligible),
                    needed=spec.min_silos
                    if waited >= self.selection_grace_s
                    else spec.silos_per_round,
                    connected=self.registry.connected_count(),
                    passed_over=sorted(skip),
                    over_cap=over,
                )
                if why != said:  # said once per change, not every poll
                    log.warning("round %d: %s", index, why)
                    said, self.waiting_reason = why, f"round {index}: {why}"
                self.metrics.silos_missing.set(spec.min_silos - len(eligible))
                if spec.wait_timeout_s and waited > spec.wait_timeout_s:
                    raise RoundGaveUp(
                        f"round {index}: gave up after waiting {spec.wait_timeout_s:g} s for "
                        f"silos: {why}"
                    )
                self._changed.wait(self.poll_s)
        return None

    def _play_round(self, run: RunRecord, index: int) -> bool:
        """Play round `index` until it is saved (True), or the run stops or pauses (False)."""
        skip: set[str] = set()  # missed the last attempt: not asked again right away
        reselections: list[str] = []
        attempt = 0
        while True:
            available = self._await_silos(run, index, skip)
            if available is None:
                return False
            assert self.model is not None
            rng = round_rng(run.spec.seed, index, attempt)
            k = min(run.spec.silos_per_round, len(available))
            selected = choose(available, k, rng, last=self.registry.stragglers(index))
            started = time.monotonic()
            open_round = self._open(run, index, attempt, selected)
            try:
                self._collect(open_round)
                if self._stop.is_set():
                    return False
                if open_round.disk_full is not None:  # an update found no room to spool
                    self._pause_for_disk(run, open_round.disk_full)
                    return False
                # a fold that failed ends the attempt early: nobody missed its deadline
                missed = (
                    []
                    if open_round.fold_failures
                    else [s for s in open_round.pending if s not in open_round.folding]
                )
                if missed:
                    self.registry.mark_stragglers(
                        missed, round_index=index, last_round=index + STRAGGLER_ROUNDS
                    )
                # a failed fold left part of an update in the running sum: never concluded
                if (
                    not open_round.fold_failures
                    and len(open_round.contributed) >= run.spec.min_silos
                ):
                    return self._conclude(run, open_round, started, reselections)
            finally:
                assert open_round.fold is not None
                open_round.fold.discard()
                self.metrics.updates_folded_live.inc(open_round.fold.folded_live)
                self.metrics.updates_folded_carried.inc(open_round.fold.folded_carried)
                self.metrics.fold_rebuilds.inc(open_round.fold.rebuilds)
            skip = {*missed, *open_round.failures}
            reselections.append(self._shortfall(run, open_round, missed))
            self.metrics.reselections.inc()
            attempt += 1

    def _shortfall(self, run: RunRecord, open_round: OpenRound, missed: list[str]) -> str:
        why = f"attempt {open_round.attempt + 1}: {len(open_round.contributed)} of "
        why += f"{len(open_round.selected)} updates by the deadline (minimum {run.spec.min_silos})"
        if missed:
            why += f"; no update from {', '.join(missed)}"
        if open_round.failures:
            why += f"; could not train: {', '.join(sorted(open_round.failures))}"
        for silo_id, failure in sorted(open_round.fold_failures.items()):
            why += f"; the update from {silo_id} did not fold ({failure})"
        log.warning("round %d: %s; reselecting", open_round.index, why)
        return why

    def _conclude(
        self, run: RunRecord, open_round: OpenRound, started: float, reselections: list[str]
    ) -> bool:
        """Aggregate and save; a non-finite result is redone, a full disk pauses the run."""
        try:
            self._aggregate(run, open_round, started, reselections)
            return True
        except FloatingPointError as exc:  # the model moved in place: back to the save
            log.error(
                "round %d: %s; redoing it from round %d",
                open_round.index,
                exc,
                run.completed_rounds,
            )
        except CheckpointFull as exc:
            self._pause_for_disk(run, exc)
        self._restore_model(run)
        return False

    def _pause_for_disk(self, run: RunRecord, exc: CheckpointFull) -> None:
        """Hold the run until the checkpoint directory has room again; the round is redone."""
        SpoolPool.at(self.store.root / INCOMING).drain()  # spools kept for reuse take room
        message = f"{exc}; the run resumes when there is room again (or: fedmllm-admin resume)"
        log.error("run %s paused: %s", run.run_id, message)
        self.metrics.checkpoint_failures.inc()
        with self._lock:
            run.phase, run.message = RunPhase.PAUSED, message
            self.open_round = None
        self.store.try_update_run(run)
        threading.Thread(
            target=self._resume_when_room, args=(run, exc.needed), daemon=True, name="disk-watch"
        ).start()

    def _resume_when_room(self, run: RunRecord, needed: int) -> None:
        while not self._stop.wait(max(self.poll_s, 1.0)):
            with self._lock:
                if run.phase is not RunPhase.PAUSED or self.run is not run:
                    return
            if self.store.bytes_free() > 4 * needed:  # the round's spools come first
                with self._lock:
                    if run.phase is RunPhase.PAUSED:
                        run.phase, run.message = RunPhase.RUNNING, ""
                        self._changed.notify_all()
                log.info("run %s: room in the checkpoint directory again; resuming", run.run_id)
                self.store.try_update_run(run)
                return

    def _open(self, run: RunRecord, index: int, attempt: int, selected: list[str]) -> OpenRound:
        assert self.model is not None
        # every silo that joined this run to train (SCAFFOLD's N), also across restarts
        trainers = (s.silo_id for s in self.registry.snapshot() if s.num_train_samples > 0)
        run.silos_seen = sorted({*run.silos_seen, *trainers})
        open_round = OpenRound.open(
            run_id=run.run_id,
            index=index,
            attempt=attempt,
            selected=selected,
            download=self.model.download(),
            fold=RoundFold(
                aggregate=self.model.begin_round(population=len(run.silos_seen)),
                rule=AggregationRule.from_spec(run.spec),
                selected=selected,
                shape=self.model.update_shape(run.spec.wire_dtype),
            ),
            deadline_s=run.spec.round_deadline_s,
        )
        plan = training_plan(run.spec, index)
        with self._lock:
            self.open_round = open_round
            self.phase = pb.ROUND_PHASE_TRAINING
            for silo_id in selected:
                task = open_round.task_for(silo_id, plan, confirmed=run.confirmed_task(silo_id))
                if not self.registry.send(silo_id, task):
                    log.warning("round %d: silo %s left before its task was sent", index, silo_id)
        self.metrics.round.set(index)
        self.metrics.silos_selected.set(len(selected))
        log.info("round %d: selected %s (lr %.3g)", index, ", ".join(selected), plan.learning_rate)
        return open_round

    def _collect(self, open_round: OpenRound, *, phase: str = "training") -> None:
        """Wait until every selected silo answered or the deadline passed. A silo that
        disconnects is waited for: it gets its task again when it comes back."""
        with self._lock:
            while not self._stop.is_set():
                if not open_round.pending or time.monotonic() >= open_round.deadline:
                    break
                if open_round.disk_full is not None or open_round.fold_failures:
                    break
                self._changed.wait(self.poll_s)
            open_round.closed = True
            while open_round.folding:  # updates accepted before the close finish folding
                self._changed.wait(self.poll_s)
        self.metrics.phase_duration.labels(phase=phase).observe(
            time.monotonic() - open_round.started
        )

    def _aggregate(
        self, run: RunRecord, open_round: OpenRound, started: float, reselections: list[str]
    ) -> None:
        model, fold = self.model, open_round.fold
        assert model is not None and fold is not None
        self.phase = pb.ROUND_PHASE_AGGREGATING
        with self.metrics.phase_duration.labels(phase="aggregation").time():
            with open_round.fold_lock:
                outcome = fold.finish()
            aggregate = fold.aggregate
            total_norm = model.apply(aggregate)
        record = RoundRecord(
            round=open_round.index,
            selected=open_round.selected,
            contributed=sorted(open_round.contributed),
            num_samples=aggregate.samples,
            mean_train_loss=open_round.sample_mean("mean_loss"),
            bytes_sent=open_round.bytes_sent,
            bytes_received=open_round.bytes_received,
            seconds=time.monotonic() - started,
            rejected=open_round.rejected,
            mean_gamma=open_round.sample_mean("gamma"),
            update_norm=total_norm / aggregate.weight_sum,
            clipped=outcome.clipped,
            excluded=outcome.excluded,
            failures=dict(open_round.failures),
            reselections=reselections,
            tasks={s: open_round.sent[s].task_id for s in open_round.contributed},
            learning_rate=training_plan(run.spec, open_round.index).learning_rate,
        )
        self.phase = pb.ROUND_PHASE_CHECKPOINTING
        self._save(run, record, model)
        self._report(run, record, started)

    def _save(self, run: RunRecord, record: RoundRecord, model: GlobalModel) -> None:
        """The round counts once it is saved: the saved record carries it, then memory."""
        with self._lock:
            saved = run.with_round(record)
        with self.metrics.phase_duration.labels(phase="checkpoint").time():
            self.store.save_round(saved, record.round, model.adapter(), model.strategy_state())
        with self._lock:
            run.history.append(record)
            self.open_round = None
            changed_meanwhile = run.phase is not saved.phase  # paused while saving
        if changed_meanwhile:
            self.store.try_update_run(run)

    def _report(self, run: RunRecord, record: RoundRecord, started: float) -> None:
        self.metrics.rounds_completed.inc()
        self.metrics.train_loss.set(record.mean_train_loss)
        self.metrics.update_norm.set(record.update_norm)
        self.metrics.silos_responded.set(len(record.contributed))
        self.metrics.silos_dropped.set(len(record.selected) - len(record.contributed))
        self.metrics.mean_gamma.set(record.mean_gamma)
        self.metrics.round_duration.observe(time.monotonic() - started)
        log.info(
            "round %d: %s aggregated %d updates (%d samples), mean train loss %.4f, %.1f s",
            record.round,
            run.spec.strategy,
            len(record.contributed),
            record.num_samples,
            record.mean_train_loss,
            record.seconds,
        )
