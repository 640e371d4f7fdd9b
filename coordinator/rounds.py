"""One open round: the selected silos, the adapter they download, and the updates folded so far."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from coordinator.aggregation import native
from coordinator.aggregation.fold import RoundFold
from coordinator.checkpoint import CheckpointFull
from shared.bounded import printable
from shared.errors import FedMLLMError
from shared.payload import CHUNK_BYTES, PayloadCheck, PayloadDigest, iter_chunks
from shared.safetensors_stream import StateEncoder
from shared.tensor_codec import StateDict, encode_state
from shared.wire.v1 import federation_pb2 as pb


class Refusal(FedMLLMError):
    """A request the coordinator refuses, with the exact gRPC status code to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "refused") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # the label it is counted under (fedmllm_updates_rejected_total)


@dataclass
class Contribution:
    num_samples: int
    mean_loss: float
    steps: int
    gamma: float


@dataclass(frozen=True)
class EvaluationResult:
    """One silo's evaluation of a round's adapter."""

    num_samples: int
    metrics: dict[str, float]


@dataclass
class OpenRound:
    """A round between selection and aggregation. Guarded by the federation's lock."""

    run_id: str
    index: int
    attempt: int
    selected: list[str]
    # the adapter download: its chunk messages, serialised once and written to every silo
    messages: list[bytes]
    digest: PayloadDigest
    deadline: float
    fold: RoundFold | None  # the updates of a training round; None for an evaluation round
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> silo id
    contributed: dict[str, Contribution] = field(default_factory=dict)
    rejected: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    started: float = field(default_factory=time.monotonic)
    closed: bool = False
    sent: dict[str, pb.RoundTask] = field(default_factory=dict)  # silo id -> its task
    folding: set[str] = field(default_factory=set)  # reserved, being read into the sum
    fold_lock: threading.Lock = field(default_factory=threading.Lock)
    reports: dict[str, EvaluationResult] = field(default_factory=dict)  # evaluation rounds
    failures: dict[str, str] = field(default_factory=dict)  # silo id -> why it could not
    disk_full: CheckpointFull | None = None  # an update found no room to spool: run pauses
    fold_failures: dict[str, str] = field(default_factory=dict)  # silo -> why: attempt redone
    stages: dict[str, tuple[str, float]] = field(default_factory=dict)  # silo -> (stage, at s)

    def reach(self, silo_id: str, stage: str) -> None:
        """Note how far a selected silo has come (for the admin's status)."""
        self.stages[silo_id] = (stage, time.monotonic() - self.started)

    def progress(self) -> list[pb.SiloProgress]:
        return [
            pb.SiloProgress(silo_id=silo, stage=stage, seconds=at)
            for silo, (stage, at) in sorted(self.stages.items())
        ]

    @property
    def kind(self) -> pb.TaskKind:
        return pb.TASK_KIND_TRAIN if self.fold is not None else pb.TASK_KIND_EVALUATE

    @property
    def answered(self) -> set[str]:
        """Silos done with their task: updated, evaluated, or reported they cannot."""
        return {*self.contributed, *self.reports, *self.failures}

    @classmethod
    def open(
        cls,
        *,
        run_id: str,
        index: int,
        attempt: int,
        selected: list[str],
        download: StateDict,
        fold: RoundFold | None,
        deadline_s: float,
    ) -> OpenRound:
        # once per round, shared by every download
        check, messages = PayloadCheck(crc32=native.crc32), []
        for chunk in encode_download(download):  # each chunk let go once serialised
            check.update(chunk)
            messages.append(pb.PayloadChunk(data=chunk).SerializeToString())
        return cls(
            run_id=run_id,
            index=index,
            attempt=attempt,
            selected=selected,
            messages=messages,
            digest=PayloadDigest(check.received, crc32=check.crc32),
            deadline=time.monotonic() + deadline_s,
            fold=fold,
        )

    def task_for(self, silo_id: str, plan: pb.TrainingPlan, *, confirmed: str = "") -> pb.RoundTask:
        task_id = f"{self.run_id}/r{self.index}/a{self.attempt}/{secrets.token_hex(6)}"
        self.tasks[task_id] = silo_id
        task = pb.RoundTask(
            run_id=self.run_id,
            round=self.index,
            task_id=task_id,
            training=plan,
            adapter=self.digest.to_header(),
            kind=self.kind,
            confirmed_task_id=confirmed,
        )
        self.sent[silo_id] = task
        self.reach(silo_id, "selected")
        return task

    def unanswered_task(self, silo_id: str) -> pb.RoundTask | None:
        """The silo's task if it still owes an update (to send again after it reconnects)."""
        if self.closed or silo_id in self.answered or silo_id in self.folding:
            return None
        return self.sent.get(silo_id)

    def check_task(self, task_id: str, silo_id: str, *, kind: pb.TaskKind | None = None) -> None:
        """Refuse a task id that is not this silo's task in this open round."""
        owner = self.tasks.get(task_id)
        shown = printable(task_id)
        if owner is None:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {shown!r} is late: it is not a task of open round {self.index}",
                reason="late",
            )
        if owner != silo_id:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"task {shown!r} belongs to another silo, not {silo_id!r}",
            )
        if self.closed:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"round {self.index} is closed; update from {silo_id!r} arrived late",
                reason="late",
            )
        if kind is not None and kind != self.kind:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {shown!r} is a {pb.TaskKind.Name(self.kind)} task",
            )
        if silo_id in self.failures:
            raise Refusal(
                grpc.StatusCode.ALREADY_EXISTS,
                f"silo {silo_id!r} already reported it cannot carry out its task of round "
                f"{self.index}",
            )
        if silo_id in self.answered or silo_id in self.folding:
            raise Refusal(
                grpc.StatusCode.ALREADY_EXISTS,
                f"silo {silo_id!r} already contributed to round {self.index}",
            )

    @property
    def pending(self) -> list[str]:
        return [s for s in self.selected if s not in self.answered]

    def sample_mean(self, field: str) -> float:
        """Sample-weighted mean of a contribution field (mean_loss, gamma) over the round."""
        total = sum(c.num_samples for c in self.contributed.values())
        weighted = sum(float(getattr(c, field)) * c.num_samples for c in self.contributed.values())
        return weighted / total


def encode_download(download: StateDict) -> Iterator[bytes]:
    """What silos download, as safetensors cut into chunks: straight from the tensors when
    they share one dtype (a run's wire dtype), else serialised by safetensors first."""
    dtypes = {t.dtype for t in download.values()}
    if len(dtypes) == 1:
        return StateEncoder(download, dtype=dtypes.pop()).chunks(chunk_bytes=CHUNK_BYTES)
    return iter_chunks(encode_state(download))


def weighted_means(results: list[EvaluationResult]) -> dict[str, float]:
    """Per metric, the mean over the silos that reported it, weighted by their test samples."""
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    for result in results:
        for name, value in result.metrics.items():
            totals[name] = totals.get(name, 0.0) + value * result.num_samples
            weights[name] = weights.get(name, 0) + result.num_samples
    return {name: totals[name] / weights[name] for name in sorted(totals)}
