"""The silo agent's connection to the coordinator: join, take round tasks, train, upload."""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from shared import __version__
from shared.errors import (
    IncompatibleSilo,
)
from shared.evaluation.judge import LLMJudge
from shared.grpc_options import CHANNEL_OPTIONS
from shared.silo_data import Sample
from shared.tensor_codec import CONTROL_PREFIX, StateDict
from shared.tls import TlsFiles, channel_credentials
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.control_variates import ControlVariates
from silo_agent.evaluator import evaluate
from silo_agent.failures import failure_reason
from silo_agent.metrics import SiloMetrics
from silo_agent.model import SiloModel
from silo_agent.round_task import plan_of, split_controls
from silo_agent.trainer import LocalResult, load_global_adapter, train_round
from silo_agent.transfer import download_adapter, in_layout_dtypes, update_encoder, upload_update

log = logging.getLogger(__name__)

MAX_HEARTBEAT_FAILURES = 3
# Refusals that concern one task (late, duplicate, malformed): the session goes on.
TASK_REFUSALS = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class Backoff:
    """Reconnection delays: doubling from `initial_s` up to `max_s`, jittered; while a
    session held within `recent_s`, never above `recent_max_s`, so that silos are back within
    seconds of a coordinator restart."""

    initial_s: float = 1.0
    max_s: float = 60.0
    recent_s: float = 300.0
    recent_max_s: float = 2.0

    def delay(self, attempt_delay: float, *, since_session: float) -> float:
        cap = self.recent_max_s if since_session < self.recent_s else self.max_s
        return min(attempt_delay, cap) * random.uniform(0.5, 1.0)


class SiloAgent:
    """Runs until stopped: (re)joins, executes each round task, uploads the delta."""

    def __init__(
        self,
        *,
        coordinator: str,
        tls: TlsFiles,
        silo: SiloModel,
        samples: Sequence[Sample],
        test_samples: Sequence[Sample] = (),
        judge: LLMJudge | None = None,
        backoff: Backoff | None = None,
        metrics: SiloMetrics | None = None,
        weights_fingerprint: str = "",
        train: Callable[..., LocalResult] = train_round,  # e.g. a RoundTrainer of several GPUs
    ) -> None:
        self._target = coordinator
        self._credentials = channel_credentials(tls)
        self._silo = silo
        self._samples = samples  # empty for an evaluation-only silo
        self._test_samples = test_samples
        self._judge = judge
        self._train_round = train
        self.metrics = metrics or SiloMetrics()
        self.metrics.samples.labels(split="train").set(len(samples))
        self.metrics.samples.labels(split="test").set(len(test_samples))
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._call: grpc.RpcContext | None = None
        self._state = "idle"
        self._controls = ControlVariates()
        self._instance = secrets.token_hex(8)  # tells this process from a second one
        self._weights = weights_fingerprint  # of the base model's weight files
        self._last_session = -1e9  # when a session last held (monotonic)
        self.silo_id = ""

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> None:
        """Join and serve round tasks until stopped, reconnecting with exponential backoff
        (started afresh by every successful join)."""
        delay = self._backoff.initial_s
        while not self._stop.is_set():
            joined_before = self._last_session
            try:
                self._session()
                reason = "the coordinator closed the task stream"
            except grpc.RpcError as exc:
                if _refused_for_good(exc, joined=bool(self.silo_id)):
                    raise IncompatibleSilo(exc.details() or "refused by the coordinator") from exc
                reason = f"{exc.code().name}: {exc.details()}"
            if self._stop.is_set():
                break
            if self._last_session > joined_before:
                delay = self._backoff.initial_s  # this attempt joined: start afresh
                self._last_session = time.monotonic()
            wait = self._backoff.delay(delay, since_session=time.monotonic() - self._last_session)
            log.warning(
                "session with %s ended (%s); reconnecting in %.1f s", self._target, reason, wait
            )
            self._stop.wait(wait)
            delay = min(delay * 2, self._backoff.max_s)

    def _join(self, stub: pb_grpc.SiloStub) -> pb.JoinResponse:
        silo = self._silo
        request = pb.JoinRequest(
            agent_version=__version__,
            base_model_fingerprint=silo.fingerprint,
            base_model_config_json=json.dumps(silo.canonical_config, sort_keys=True),
            lora_config_json=silo.lora_config_json,
            adapter_layout=[
                pb.TensorSpec(name=t.name, shape=list(t.shape), dtype=t.dtype)
                for t in silo.adapter_layout.values()
            ],
            num_train_samples=len(self._samples),
            num_test_samples=len(self._test_samples),
            agent_instance=self._instance,
            base_model_weights_fingerprint=self._weights,
        )
        joined: pb.JoinResponse = stub.Join(request, wait_for_ready=True, timeout=30)
        self.silo_id = joined.silo_id
        self._last_session = time.monotonic()
        log.info(
            "joined as %s with %d training and %d test samples",
            joined.silo_id,
            len(self._samples),
            len(self._test_samples),
        )
        return joined

    def _session(self) -> None:
        with grpc.secure_channel(
            self._target, self._credentials, options=CHANNEL_OPTIONS
        ) as channel:
            stub = pb_grpc.SiloStub(channel)
            joined = self._join(stub)
            stream = stub.ReceiveTasks(pb.TaskStreamRequest(session_id=joined.session_id))
            self._call = stream
            over = threading.Event()
            beat = threading.Thread(
                target=self._heartbeat, daemon=True, args=(stub, joined, stream, over)
            )
            beat.start()
            try:
                for task in stream:
                    self._execute(stub, task)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED or not self._stop.is_set():
                    raise
            finally:
                over.set()
                self._call = None

    def _heartbeat(
        self,
        stub: pb_grpc.SiloStub,
        joined: pb.JoinResponse,
        stream: grpc.RpcContext,
        over: threading.Event,
    ) -> None:
        """Report liveness; when the coordinator forgot the session or stopped answering,
        end the task stream so that the agent joins again."""
        failures = 0
        while not over.wait(max(joined.heartbeat_interval_s, 1)):
            try:
                reply = stub.Heartbeat(
                    pb.HeartbeatRequest(session_id=joined.session_id, state=self._state), timeout=10
                )
                failures = 0 if reply.session_known else MAX_HEARTBEAT_FAILURES
            except ValueError:  # the session's channel closed while the beat was due
                return
            except grpc.RpcError as exc:
                failures += 1
                log.warning("heartbeat failed (%s), %d in a row", exc.code().name, failures)
            if failures >= MAX_HEARTBEAT_FAILURES:
                stream.cancel()
                return

    def _download(self, stub: pb_grpc.SiloStub, task: pb.RoundTask) -> StateDict:
        return download_adapter(stub, task)

    def _execute(self, stub: pb_grpc.SiloStub, task: pb.RoundTask) -> None:
        """One round task. A refusal of this task (late, duplicate, malformed) is logged and
        the session goes on; a lost connection ends the session."""
        label = f"round {task.round}"
        try:
            if task.kind == pb.TASK_KIND_EVALUATE:
                self._evaluate_and_report(stub, task, label)
            else:
                self._train_and_upload(stub, task, label)
        except grpc.RpcError as exc:
            if exc.code() not in TASK_REFUSALS:
                raise
            if arrived_late(task, exc):
                log.warning(
                    "%s: the update arrived late (%s); the coordinator did not count it, this "
                    "silo takes the next task",
                    label,
                    exc.details(),
                )
            else:
                log.error(
                    "%s: refused by the coordinator (%s: %s)",
                    label,
                    exc.code().name,
                    exc.details(),
                )
        except Exception as exc:  # whatever stops this task: say so, then take the next one
            reason = failure_reason(exc)
            log.error("%s: cannot carry out the task (%s): %s", label, reason, exc)
            self._report_failure(stub, task, reason, exc)
        finally:
            self._state = "idle"

    def _report_failure(
        self, stub: pb_grpc.SiloStub, task: pb.RoundTask, reason: str, exc: Exception
    ) -> None:
        """Tell the coordinator at once, so that the round need not wait for its deadline."""
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        try:
            stub.ReportFailure(
                pb.FailureReport(task_id=task.task_id, reason=reason, detail=detail), timeout=30
            )
        except grpc.RpcError as error:
            if error.code() not in TASK_REFUSALS:
                raise
            log.warning("round %d: failure report refused: %s", task.round, error.details())

    def _evaluate_and_report(self, stub: pb_grpc.SiloStub, task: pb.RoundTask, label: str) -> None:
        if not self._test_samples:
            raise ValueError("asked to evaluate, but this silo has no test split")
        started = time.monotonic()
        global_state, _ = split_controls(self._download(stub, task))
        self._state = f"evaluating round {task.round}"
        load_global_adapter(self._silo, global_state)
        variant = plan_of(task.training).prompt_variant
        metrics = evaluate(self._silo, self._test_samples, variant=variant, judge=self._judge)
        self.metrics.rounds.labels(kind="evaluate").inc()
        stub.ReportEvaluation(
            pb.EvaluationReport(
                task_id=task.task_id, num_samples=len(self._test_samples), metrics=metrics
            )
        )
        log.info(
            "%s: evaluated %d test samples (%s), %.1f s",
            label,
            len(self._test_samples),
            ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())),
            time.monotonic() - started,
        )

    def _train_and_upload(self, stub: pb_grpc.SiloStub, task: pb.RoundTask, label: str) -> None:
        started = time.monotonic()
        global_state, server_control = split_controls(
            in_layout_dtypes(self._download(stub, task), self._silo.adapter_layout)
        )
        if task.training.control_variates and not server_control:
            raise ValueError("SCAFFOLD round without the server control variate")
        self._state = f"training round {task.round}"
        self._controls.use_run(task.run_id)
        self._controls.confirm(task.confirmed_task_id)
        result = self._train_round(
            self._silo,
            self._samples,
            plan_of(task.training),
            global_state,
            server_control=server_control or None,
            controls=self._controls,
            label=label,
        )
        controls = {CONTROL_PREFIX + n: t for n, t in (result.control_delta or {}).items()}
        header = pb.UpdateHeader(
            task_id=task.task_id,
            num_samples=result.num_samples,
            mean_loss=result.mean_loss,
            steps=result.steps,
            gamma=result.gamma,
        )
        self._state = f"uploading round {task.round}"
        encoder = update_encoder(
            {**result.delta, **controls}, task.training.wire_dtype or "float32"
        )
        sent_bytes = upload_update(stub, header, encoder)
        elapsed = time.monotonic() - started
        self.metrics.steps.inc(result.steps)
        self.metrics.loss.set(result.mean_loss)
        self.metrics.step_rate.set(result.steps / elapsed if elapsed > 0 else 0.0)
        self.metrics.last_round.set(task.round)
        self.metrics.rounds.labels(kind="train").inc()
        if result.control_delta is not None:  # c_k moves once a saved round confirms it
            sent = {n: encoder.sent(CONTROL_PREFIX + n) for n in result.control_delta}
            self._controls.propose(task.task_id, sent)
        log.info(
            "%s: trained %d samples in %d steps at lr %.3g, mean loss %.4f, gamma %.3f, "
            "sent %d bytes, %.1f s",
            label,
            result.num_samples,
            result.steps,
            task.training.learning_rate,
            result.mean_loss,
            result.gamma,
            sent_bytes,
            time.monotonic() - started,
        )


_LATE = re.compile(r"not a task of open round (\d+)|arrived late|no round is open")


def arrived_late(task: pb.RoundTask, exc: grpc.RpcError) -> bool:
    """Whether the coordinator refused this task's answer because its round had closed."""
    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return False
    found = _LATE.search(exc.details() or "")
    return found is not None and (found.group(1) is None or int(found.group(1)) != task.round)


def _refused_for_good(exc: grpc.RpcError, *, joined: bool) -> bool:
    """Refusals that retrying cannot mend: this certificate is revoked or pinned to another
    key, another agent runs with it, or (at the first join) the model does not fit."""
    code = exc.code()
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return True
    return not joined and code in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    )
