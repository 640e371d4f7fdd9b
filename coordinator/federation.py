"""The run controller: selects silos, opens rounds, accepts validated updates, aggregates, saves.

One thread runs the rounds of the current run; gRPC handler threads download adapters and fold
updates into the open round. Everything shared is guarded by one lock and its condition.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from coordinator.base_model import BaseModel, RunMismatch
from coordinator.checkpoint import CheckpointFull, CheckpointStore, no_room
from coordinator.evaluation_round import EvaluationRounds
from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from coordinator.kernel_warm_up import start_warm_up
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import SiloRegistry
from coordinator.rounds import OpenRound, Refusal
from coordinator.run_loop import RunLoop
from coordinator.run_state import RunPhase, RunRecord, RunSpec
from coordinator.silo_requests import SiloRequests
from shared.errors import UpdateRejected
from shared.tensor_codec import AdapterLayout, StateDict, describe_layout_difference, layout_of
from shared.wire.v1 import federation_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerSettings:
    """Timing knobs of the run loop."""

    selection_grace_s: float = 10.0  # wait this long for K silos before going on with fewer
    poll_s: float = 0.25  # how often waiting loops re-check liveness and stop requests


def estimated_seconds_left(run: RunRecord) -> float:
    """Rounds left times the mean round so far (0 while unknown or when the run is over)."""
    left = run.spec.rounds - run.completed_rounds
    if not run.history or left <= 0 or not run.phase.active:
        return 0.0
    return left * sum(r.seconds for r in run.history) / len(run.history)


class Federation(SiloRequests, EvaluationRounds, RunLoop):
    """The coordinator's state: current run, global adapter, open round, and the run thread."""

    def __init__(
        self,
        *,
        registry: SiloRegistry,
        store: CheckpointStore,
        metrics: CoordinatorMetrics,
        initial_adapter: Callable[[int], StateDict],
        settings: ControllerSettings,
        base_model: BaseModel,
        abandon: bool = False,
    ) -> None:
        self.registry = registry
        self.base_model = base_model
        self.store = store
        self.metrics = metrics
        self._initial_adapter = initial_adapter
        self.poll_s = settings.poll_s
        self.selection_grace_s = settings.selection_grace_s
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
        self.waiting_reason = ""  # why the current round cannot start, while it cannot
        self._resume_from_checkpoint(abandon=abandon)

    # ------------------------------------------------------------------ lifecycle

    def _resume_from_checkpoint(self, *, abandon: bool) -> None:
        """Resume the unfinished run of the checkpoint directory, if it fits this coordinator;
        a finished run is only shown (its model is kept if it fits)."""
        checkpoint = self.store.load_latest()
        if checkpoint is None:
            return
        run = checkpoint.run
        layout = describe_layout_difference(self.layout, layout_of(checkpoint.adapter))
        problems = self.base_model.differences(run, self.store) or layout
        if run.phase.active and problems:
            if not abandon:
                raise RunMismatch(
                    f"the unfinished run {run.run_id} in {self.store.root} does not fit this "
                    f"coordinator: {'; '.join(problems)}; start it with the run's model and "
                    "options, or pass --abandon-run to stop that run and start afresh"
                )
            run.phase, run.message = RunPhase.STOPPED, "abandoned: " + "; ".join(problems)
            self.store.update_run(run)
            log.warning("run %s %s", run.run_id, run.message)
        self.run = run
        if not layout:
            self.model = GlobalModel.restore(
                run.spec, self.flat, checkpoint.adapter, checkpoint.strategy_state
            )
        self.metrics.show_run(run)
        if run.phase.active:
            log.info("resuming run %s after round %d", run.run_id, checkpoint.round)
            self._start_thread()

    def _restore_model(self, run: RunRecord) -> None:
        checkpoint = self.store.load_latest()
        if checkpoint is None or checkpoint.run.run_id != run.run_id:
            raise RuntimeError(f"no checkpoint of run {run.run_id} to restore")
        self.model = GlobalModel.restore(
            run.spec, self.flat, checkpoint.adapter, checkpoint.strategy_state
        )

    def _start_thread(self) -> None:
        if self.model is not None:
            start_warm_up(self.model)  # while the first round's silos download and train
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
            run = self.base_model.pin(RunRecord(run_id=run_id, spec=spec), self.registry)
            model = GlobalModel.start(spec, self.flat, self._initial_adapter(spec.seed))
            try:
                self.base_model.save(run, self.store)
                self.store.save_round(run, 0, model.adapter(), model.strategy_state())
            except OSError as exc:
                self.store.forget_run(run_id)
                if isinstance(exc, CheckpointFull) or no_room(exc):
                    # the room check passed, yet a write found the disk full (a smaller
                    # file than a round's, or a disk that filled meanwhile)
                    full = (
                        exc
                        if isinstance(exc, CheckpointFull)
                        else (f"checkpoint directory {self.store.root} full ({exc.strerror})")
                    )
                    raise Refusal(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"run not started: {full}; free room there and start the run again",
                    ) from None
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION, f"run not started: {exc}"
                ) from None
            with self._lock:
                self.run, self.model = run, model
            self.metrics.show_run(run)
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

    def resume_run(self, run_id: str = "") -> RunRecord:
        """Go on with a paused run, or with a failed one (the current or a kept one) from its
        last saved round."""
        with self._lock:
            run = self.run
        if run is not None and run_id in ("", run.run_id) and run.phase is RunPhase.PAUSED:
            return self._set_phase(RunPhase.PAUSED, RunPhase.RUNNING)
        return self._resume_failed(run_id or (run.run_id if run else ""))

    def _resume_failed(self, run_id: str) -> RunRecord:
        with self._admin:
            with self._lock:
                if self.run is not None and self.run.phase.active:
                    raise Refusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"run {self.run.run_id} is {self.run.phase.value}; stop it first",
                    )
            try:
                checkpoint = self.store.load_run_checkpoint(run_id)
            except FileNotFoundError as exc:
                raise Refusal(grpc.StatusCode.NOT_FOUND, str(exc)) from None
            run = checkpoint.run
            if run.phase is not RunPhase.FAILED:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"run {run.run_id} is {run.phase.value}; only a paused or failed run resumes",
                )
            problems = self.base_model.differences(run, self.store)
            if problems:
                raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(problems))
            run.phase, run.message = RunPhase.RUNNING, f"resumed after round {checkpoint.round}"
            model = GlobalModel.restore(
                run.spec, self.flat, checkpoint.adapter, checkpoint.strategy_state
            )
            self.store.point_to(run.run_id)
            self.store.update_run(run)
            with self._lock:
                self.run, self.model = run, model
            self.metrics.show_run(run)
            log.info("run %s resumed after round %d", run.run_id, checkpoint.round)
            self._start_thread()
            return run

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
                self._changed.wait(self.poll_s)
        return not self._stop.is_set()

    def shutdown(self) -> None:
        """Stop the run thread without changing the run's saved state (it resumes on restart)."""
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(10.0)

    def _finish(self, run: RunRecord, phase: RunPhase, message: str) -> None:
        """End the run in memory, then on disk as far as the disk allows (never raises)."""
        with self._lock:
            run.phase, run.message = phase, message
            self.phase = pb.ROUND_PHASE_UNSPECIFIED
            self.waiting_reason = ""
        self.store.try_update_run(run)
        log.info("run %s %s: %s", run.run_id, phase.value, message)

    def status(self, run_id: str = "") -> pb.RunStatus:
        """The current run's status, or a kept run's (Refusal NOT_FOUND if there is none)."""
        with self._lock:
            run = self.run
            if run is not None and run_id in ("", run.run_id):
                status = run.status_proto(self.phase)
                status.waiting_reason = self.waiting_reason if run.phase.active else ""
                if self.open_round is not None and run.phase.active:
                    status.round_progress.extend(self.open_round.progress())
                status.eta_s = estimated_seconds_left(run)
                return status
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
