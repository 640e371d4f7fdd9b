"""The run controller: selects silos, opens rounds, accepts validated updates, aggregates, saves.

One thread runs the rounds of the current run; gRPC handler threads download adapters and fold
updates into the open round. Everything shared is guarded by one lock and its condition.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import torch

from coordinator.aggregation.fold import AggregationRule, RoundFold
from coordinator.checkpoint import CheckpointStore
from coordinator.evaluation_round import EvaluationRounds
from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import SiloRegistry
from coordinator.rounds import OpenRound, Refusal
from coordinator.run_state import RoundRecord, RunPhase, RunRecord, RunSpec
from coordinator.schedule import training_plan
from coordinator.silo_requests import SiloRequests
from shared.errors import UpdateRejected
from shared.tensor_codec import AdapterLayout, StateDict, describe_layout_difference, layout_of
from shared.wire.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)

# Rounds that end below min_silos are retried with a fresh selection this many times.
MAX_ROUND_ATTEMPTS = 3


@dataclass(frozen=True)
class ControllerSettings:
    """Timing knobs of the run loop."""

    selection_grace_s: float = 10.0  # wait this long for K silos before going on with fewer
    poll_s: float = 0.25  # how often waiting loops re-check liveness and stop requests


class Federation(SiloRequests, EvaluationRounds):
    """The coordinator's state: current run, global adapter, open round, and the run thread."""

    def __init__(
        self,
        *,
        registry: SiloRegistry,
        store: CheckpointStore,
        metrics: CoordinatorMetrics,
        initial_adapter: Callable[[int], StateDict],
        settings: ControllerSettings,
    ) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self._initial_adapter = initial_adapter
        self._settings = settings
        self.layout: AdapterLayout = layout_of(initial_adapter(0))
        self.flat = FlatLayout.from_layout(self.layout)
        # `_lock` guards the run, the model and the open round for short moments only: the
        # event loop takes it too. `_admin` serialises run changes, which write checkpoints.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._admin = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.run: RunRecord | None = None
        self.model: GlobalModel | None = None
        self.open_round: OpenRound | None = None
        self.phase: pb.RoundPhase = pb.ROUND_PHASE_UNSPECIFIED
        self._resume_from_checkpoint()

    # ------------------------------------------------------------------ lifecycle

    def _resume_from_checkpoint(self) -> None:
        checkpoint = self.store.load_latest()
        if checkpoint is None:
            return
        problems = describe_layout_difference(self.layout, layout_of(checkpoint.adapter))
        if problems:
            raise RuntimeError(
                f"checkpoint of run {checkpoint.run.run_id} does not fit this "
                f"base model: {'; '.join(problems)}"
            )
        self.run = checkpoint.run
        self.model = GlobalModel.restore(
            self.run.spec, self.flat, checkpoint.adapter, checkpoint.strategy_state
        )
        self.metrics.round.set(checkpoint.round)
        if self.run.phase.active:
            log.info("resuming run %s after round %d", self.run.run_id, checkpoint.round)
            self._start_thread()

    def _restore_model(self, run: RunRecord) -> None:
        checkpoint = self.store.load_latest()
        if checkpoint is None or checkpoint.run.run_id != run.run_id:
            raise RuntimeError(f"no checkpoint of run {run.run_id} to restore")
        self.model = GlobalModel.restore(
            run.spec, self.flat, checkpoint.adapter, checkpoint.strategy_state
        )

    def _start_thread(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_loop, name="run-controller", daemon=True)
        self._thread.start()

    def start_run(self, spec: RunSpec) -> RunRecord:
        problems = spec.problems()
        if problems:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        with self._admin:
            with self._lock:
                if self.run is not None and self.run.phase.active:
                    raise Refusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"run {self.run.run_id} is still running; stop it first",
                    )
            run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            run = RunRecord(run_id=run_id, spec=spec)
            model = GlobalModel.start(spec, self.flat, self._initial_adapter(spec.seed))
            self.store.save_round(run, 0, model.adapter(), model.strategy_state())
            with self._lock:
                self.run, self.model = run, model
            log.info("run %s started: %s", run_id, spec)
            self._start_thread()
        return run

    def stop_run(self, *, timeout_s: float = 30.0) -> RunRecord:
        with self._admin:
            with self._lock:
                if self.run is None or not self.run.phase.active:
                    raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "no run is running")
                self._stop.set()
                self._changed.notify_all()
                thread = self._thread
            if thread is not None:
                thread.join(timeout_s)
            return self.run

    def pause_run(self) -> RunRecord:
        """Hold the run between rounds: the open round finishes, the next waits for resume."""
        return self._set_phase(RunPhase.RUNNING, RunPhase.PAUSED)

    def resume_run(self) -> RunRecord:
        return self._set_phase(RunPhase.PAUSED, RunPhase.RUNNING)

    def _set_phase(self, current: RunPhase, new: RunPhase) -> RunRecord:
        with self._admin:
            with self._lock:
                run = self.run
                if run is None or run.phase is not current:
                    state = "no run" if run is None else f"run {run.run_id} is {run.phase.value}"
                    raise Refusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"{state}; only a {current.value} run can become {new.value}",
                    )
                run.phase = new
                self._changed.notify_all()
            self.store.update_run(run)
            log.info("run %s %s", run.run_id, new.value)
            return run

    def _wait_while_paused(self, run: RunRecord) -> bool:
        """False when the run was stopped while paused."""
        with self._lock:
            while run.phase is RunPhase.PAUSED and not self._stop.is_set():
                self._changed.wait(self._settings.poll_s)
        return not self._stop.is_set()

    def shutdown(self) -> None:
        """Stop the run thread without changing the run's saved state (it resumes on restart)."""
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(10.0)

    # ------------------------------------------------------------------ run loop

    def _run_loop(self) -> None:
        run = self.run
        assert run is not None
        try:
            while run.completed_rounds < run.spec.rounds and not self._stop.is_set():
                if not self._wait_while_paused(run):
                    break
                index = run.completed_rounds + 1
                self._play_round(run, index)
                every = run.spec.eval_every
                due = index == run.spec.rounds or index % max(every, 1) == 0
                if every and run.completed_rounds == index and due:
                    self._evaluate(run, index)
            if run.completed_rounds >= run.spec.rounds:
                self._finish(run, RunPhase.COMPLETED, f"{run.completed_rounds} rounds completed")
            elif self.run is run and run.phase.active and self._stop_requested:
                self._finish(
                    run,
                    RunPhase.STOPPED,
                    f"stopped by the admin after round {run.completed_rounds}",
                )
        except Exception as exc:
            log.exception("run %s failed", run.run_id)
            self._finish(run, RunPhase.FAILED, f"round {run.completed_rounds + 1}: {exc}")

    @property
    def _stop_requested(self) -> bool:
        return self._stop.is_set() and not self.registry.closed.is_set()

    def _finish(self, run: RunRecord, phase: RunPhase, message: str) -> None:
        with self._lock:
            run.phase, run.message = phase, message
            self.phase = pb.ROUND_PHASE_UNSPECIFIED
        self.store.update_run(run)
        log.info("run %s %s: %s", run.run_id, phase.value, message)

    def _await_silos(self, spec: RunSpec, exclude: set[str]) -> list[str] | None:
        """Silos to select from: K of them, or at least min_silos after the grace period.
        Silos that declared more samples than the run allows, or that reported they cannot
        carry out this round's task (`exclude`), are passed over."""
        self.phase = pb.ROUND_PHASE_WAITING_FOR_SILOS
        waited_from = time.monotonic()
        with self._lock:
            while not self._stop.is_set():
                available = [
                    s
                    for s in self.registry.available()
                    if s not in exclude
                    and self.registry.declared_samples(s) <= spec.max_samples_per_silo
                ]
                graced = time.monotonic() - waited_from >= self._settings.selection_grace_s
                if len(available) >= spec.silos_per_round or (
                    graced and len(available) >= spec.min_silos
                ):
                    return available
                self._changed.wait(self._settings.poll_s)
        return None

    def _play_round(self, run: RunRecord, index: int) -> None:
        failed: set[str] = set()  # silos that said they cannot train: not asked again this round
        for attempt in range(MAX_ROUND_ATTEMPTS):
            available = self._await_silos(run.spec, failed)
            if available is None:
                return
            assert self.model is not None
            rng = random.Random(run.spec.seed * 1_000_003 + index * 1_009 + attempt)
            k = min(run.spec.silos_per_round, len(available))
            selected = self.model.strategy.select(available, k, rng)
            started = time.monotonic()
            open_round = self._open(run, index, attempt, selected)
            try:
                self._collect(open_round)
                failed |= open_round.failures.keys()
                if self._stop.is_set():
                    return
                if len(open_round.contributed) >= run.spec.min_silos:
                    try:
                        self._aggregate(run, open_round, started)
                        return
                    except FloatingPointError as exc:  # the model moved in place: back to the save
                        log.error(
                            "round %d: %s; restoring round %d and redoing it",
                            index,
                            exc,
                            run.completed_rounds,
                        )
                        self._restore_model(run)
                        continue
            finally:
                assert open_round.fold is not None
                open_round.fold.discard()
            log.warning(
                "round %d: %d of %d updates by the deadline (minimum %d); reselecting",
                index,
                len(open_round.contributed),
                k,
                run.spec.min_silos,
            )
        raise RuntimeError(
            f"round {index}: fewer than {run.spec.min_silos} updates in "
            f"{MAX_ROUND_ATTEMPTS} attempts"
        )

    def _open(self, run: RunRecord, index: int, attempt: int, selected: list[str]) -> OpenRound:
        assert self.model is not None
        # every silo that ever joined this run (SCAFFOLD's N), also across restarts
        run.silos_seen = sorted({*run.silos_seen, *(s.silo_id for s in self.registry.snapshot())})
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
                task = open_round.task_for(silo_id, plan)
                if not self.registry.send(silo_id, task):
                    log.warning("round %d: silo %s left before its task was sent", index, silo_id)
        self.metrics.round.set(index)
        self.metrics.silos_selected.set(len(selected))
        log.info("round %d: selected %s (lr %.3g)", index, ", ".join(selected), plan.learning_rate)
        return open_round

    def _collect(self, open_round: OpenRound, *, phase: str = "training") -> None:
        """Wait until every selected silo answered, the deadline passed, or none can answer."""
        with self._lock:
            while not self._stop.is_set():
                pending = open_round.pending
                if not pending or time.monotonic() >= open_round.deadline:
                    break
                if not set(pending) & set(self.registry.reachable()):
                    log.warning(
                        "round %d: every pending silo left (%s)",
                        open_round.index,
                        ", ".join(pending),
                    )
                    break
                self._changed.wait(self._settings.poll_s)
            open_round.closed = True
            while open_round.folding:  # updates accepted before the close finish folding
                self._changed.wait(self._settings.poll_s)
        self.metrics.phase_duration.labels(phase=phase).observe(
            time.monotonic() - open_round.started
        )

    def _aggregate(self, run: RunRecord, open_round: OpenRound, started: float) -> None:
        model, fold = self.model, open_round.fold
        assert model is not None and fold is not None
        self.phase = pb.ROUND_PHASE_AGGREGATING
        with self.metrics.phase_duration.labels(phase="aggregation").time():
            with open_round.fold_lock:
                outcome = fold.finish()
            aggregate = fold.aggregate
            model.apply(aggregate)
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
            update_norm=float(torch.linalg.vector_norm(aggregate.total)) / aggregate.weight_sum,
            clipped=outcome.clipped,
            excluded=outcome.excluded,
            failures=dict(open_round.failures),
            learning_rate=training_plan(run.spec, open_round.index).learning_rate,
        )
        self.phase = pb.ROUND_PHASE_CHECKPOINTING
        with self._lock:
            # the round counts once it is saved: the saved record carries it, then memory
            saved = RunRecord(
                run_id=run.run_id,
                spec=run.spec,
                phase=run.phase,
                history=[*run.history, record],
                message=run.message,
                silos_seen=run.silos_seen,
            )
        with self.metrics.phase_duration.labels(phase="checkpoint").time():
            self.store.save_round(saved, open_round.index, model.adapter(), model.strategy_state())
        with self._lock:
            run.history.append(record)
            self.open_round = None
            changed_meanwhile = run.phase is not saved.phase  # paused while saving
        if changed_meanwhile:
            self.store.update_run(run)
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

    def status(self, run_id: str = "") -> pb.RunStatus:
        """The current run's status, or a kept run's (Refusal NOT_FOUND if there is none)."""
        with self._lock:
            if self.run is not None and run_id in ("", self.run.run_id):
                return self.run.status_proto(self.phase)
        if not run_id:
            return pb.RunStatus(state=pb.RUN_STATE_IDLE, message="no run started yet")
        try:
            return self.store.load_run(run_id).status_proto(pb.ROUND_PHASE_UNSPECIFIED)
        except FileNotFoundError as exc:
            raise Refusal(grpc.StatusCode.NOT_FOUND, str(exc)) from None

    def drop_from_round(self, silo_id: str, reason: str) -> None:
        """The silo will not answer its task of the open round (revoked): stop waiting for it."""
        with self._lock:
            open_round = self.open_round
            if open_round is not None and silo_id in open_round.pending:
                open_round.failures[silo_id] = reason
                self._changed.notify_all()


__all__ = ["ControllerSettings", "Federation", "Refusal", "UpdateRejected"]
