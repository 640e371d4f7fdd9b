"""A run's specification, its per-round history and its lifecycle state, as saved and served."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from coordinator.run_schema import field_problems
from shared.wire.v1 import federation_pb2 as pb


class RunPhase(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"
    PAUSED = "paused"

    @property
    def active(self) -> bool:
        """A run that holds the coordinator: running, or paused between rounds."""
        return self in (RunPhase.RUNNING, RunPhase.PAUSED)


UINT64_MAX, UINT32_MAX = 2**64 - 1, 2**32 - 1

_STATE_TO_PROTO = {
    RunPhase.IDLE: pb.RUN_STATE_IDLE,
    RunPhase.RUNNING: pb.RUN_STATE_RUNNING,
    RunPhase.COMPLETED: pb.RUN_STATE_COMPLETED,
    RunPhase.STOPPED: pb.RUN_STATE_STOPPED,
    RunPhase.FAILED: pb.RUN_STATE_FAILED,
    RunPhase.PAUSED: pb.RUN_STATE_PAUSED,
}


_OPTIONAL = (
    "eta",
    "tau",
    "beta1",
    "beta2",
    "momentum",
    "mask_skip_layers",
    "max_samples_per_silo",
    "max_weight_share",
    "trim_fraction",
    "byzantine_silos",
)
# Deltas that are not plain weighted sums of the silos' updates cannot take a robust rule.
_PLAIN_SUM_STRATEGIES = ("scaffold", "fednova")


@dataclass(frozen=True)
class RunSpec:
    """What the admin asked for when starting a run (also the keys of a run config file)."""

    rounds: int = 5  # number of federated rounds
    silos_per_round: int = 2  # K: silos selected per round
    min_silos: int = 1  # fewest updates a round may aggregate after its deadline
    round_deadline_s: float = 600.0  # how long a round waits for updates
    seed: int = 0  # seeds silo selection, the initial adapter and local shuffling
    learning_rate: float = 2e-5  # base client learning rate
    local_epochs: int = 1  # local epochs per round
    batch_size: int = 4  # local batch size
    strategy: str = "fedavg"  # server strategy (see docs/strategies.md)
    eta: float | None = None  # server learning rate; None takes the strategy's default
    tau: float = 1e-3  # FedOpt adaptivity (v starts at tau^2)
    beta1: float | None = None  # FedOpt first-moment decay; None: 0.9 (FedAdagrad: 0)
    beta2: float = 0.99  # FedOpt second-moment decay
    momentum: float = 0.9  # FedAvgM server momentum
    proximal_mu: float = 0.0  # FedProx mu on all LoRA weights (0: off)
    gamma_max: float = 0.0  # adaptive masked proximal regulariser's gamma_max (0: off)
    mask_skip_layers: int = 4  # decoder layers left out of the mask at each end
    prompt_variant: str = ""  # "", "original" or "improved" (modality-agnostic)
    lr_schedule: str = "cosine"  # "cosine" (1% warm-up) or "constant"
    eval_every: int = 0  # federated evaluation every N rounds and after the last (0: off)
    max_samples_per_silo: int = 1_000_000  # most samples a silo may declare (its weight's cap)
    max_weight_share: float = 1.0  # largest share of a round's weight one update may carry
    aggregator: str = "mean"  # mean, trimmed_mean, median, krum or multi_krum
    trim_fraction: float = 0.1  # trimmed_mean: fraction dropped at each end per coordinate
    byzantine_silos: int = 1  # krum / multi_krum: Byzantine silos tolerated (f)
    multi_krum_keep: int = 0  # multi_krum: best-scored updates averaged (0: K - f)
    clip_norm: float = 0.0  # per-update L2 clipping bound (0: off)
    clip_median_factor: float = 0.0  # clip to this multiple of the round's median norm (0: off)
    # updates and downloads travel in: bfloat16, float16, float32, or int8 (updates as
    # blockwise 8-bit codes, downloads in bfloat16)
    wire_dtype: str = "bfloat16"
    wait_timeout_s: float = 0.0  # give up a round short of min_silos after this long (0: never)
    local_optimizer: str = ""  # sgd or adamw; "" takes the strategy's (SGD: SCAFFOLD, FedNova)

    def problems(self) -> list[str]:
        """Each value's type and range (coordinator.run_schema), then how they combine."""
        found = field_problems(asdict(self))
        if self.min_silos > self.silos_per_round:
            found.append("min_silos must not exceed silos_per_round")
        if self.aggregator != "mean" and self.strategy in _PLAIN_SUM_STRATEGIES:
            found.append(f"aggregator {self.aggregator} does not compose with {self.strategy}")
        if self.aggregator in ("krum", "multi_krum"):
            f = self.byzantine_silos
            if self.min_silos < 2 * f + 3:
                found.append(
                    f"{self.aggregator} with {f} Byzantine silo(s) needs min_silos >= "
                    f"{2 * f + 3} (2f + 3 updates in every round)"
                )
            if self.multi_krum_keep > self.min_silos:
                found.append("multi_krum_keep must not exceed min_silos")
        return found

    def to_proto(self) -> pb.RunSpec:
        values = {k: v for k, v in asdict(self).items() if v is not None}
        return pb.RunSpec(**values)

    @classmethod
    def from_proto(cls, message: pb.RunSpec) -> RunSpec:
        values = {}
        for name in cls.__dataclass_fields__:
            if name in _OPTIONAL and not message.HasField(name):
                continue
            values[name] = getattr(message, name)
        for name in ("strategy", "lr_schedule", "aggregator", "wire_dtype"):  # older clients
            if not values.get(name):
                values.pop(name, None)
        return cls(**values)


@dataclass(frozen=True)
class RoundRecord:
    """One completed round, as the history and the admin's status show it."""

    round: int
    selected: list[str]
    contributed: list[str]
    num_samples: int
    mean_train_loss: float
    bytes_sent: int
    bytes_received: int
    seconds: float
    rejected: int
    mean_gamma: float = 0.0
    learning_rate: float = 0.0
    evaluation: dict[str, float] = field(default_factory=dict)
    evaluated_by: list[str] = field(default_factory=list)
    update_norm: float = 0.0
    clipped: list[str] = field(default_factory=list)  # updates scaled down by clipping
    excluded: list[str] = field(default_factory=list)  # updates the aggregator left out
    failures: dict[str, str] = field(default_factory=dict)  # silo -> why it could not train
    reselections: list[str] = field(default_factory=list)  # attempts that fell short, and why
    tasks: dict[str, str] = field(default_factory=dict)  # contributing silo -> its task id

    def to_proto(self) -> pb.RoundSummary:
        values = asdict(self)
        del values["tasks"]  # the silos' business, not the admin's
        for name in ("num_samples", "bytes_sent", "bytes_received"):  # records of any age
            values[name] = min(max(int(values[name]), 0), UINT64_MAX)
        values["rejected"] = min(max(int(values["rejected"]), 0), UINT32_MAX)
        return pb.RoundSummary(**values)


@dataclass
class RunRecord:
    """The whole run as checkpointed: spec, lifecycle state and the history of rounds."""

    run_id: str
    spec: RunSpec
    phase: RunPhase = RunPhase.RUNNING
    history: list[RoundRecord] = field(default_factory=list)
    message: str = ""
    silos_seen: list[str] = field(default_factory=list)  # every silo that joined during the run
    started_at: float = field(default_factory=time.time)  # unix time
    base_model_fingerprint: str = ""  # the base model's config fingerprint, pinned at start
    base_model_weights_fingerprint: str = ""  # pinned from the first silo that reports one

    @property
    def completed_rounds(self) -> int:
        return len(self.history)

    def confirmed_task(self, silo_id: str) -> str:
        """The task of the silo's latest update that a saved round aggregated ("": none)."""
        for record in reversed(self.history):
            if silo_id in record.tasks:
                return record.tasks[silo_id]
        return ""

    def with_round(self, record: RoundRecord) -> RunRecord:
        """A copy with one more round in its history (what a round's checkpoint saves)."""
        return replace(self, history=[*self.history, record], silos_seen=list(self.silos_seen))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "run_id": self.run_id,
            "spec": asdict(self.spec),
            "phase": self.phase.value,
            "message": self.message,
            "history": [asdict(r) for r in self.history],
            "silos_seen": self.silos_seen,
            "started_at": self.started_at,
            "base_model_fingerprint": self.base_model_fingerprint,
            "base_model_weights_fingerprint": self.base_model_weights_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            run_id=data["run_id"],
            spec=RunSpec(**data["spec"]),
            phase=RunPhase(data["phase"]),
            message=data.get("message", ""),
            history=[RoundRecord(**r) for r in data["history"]],
            silos_seen=list(data.get("silos_seen", [])),
            started_at=float(data.get("started_at", 0.0)),
            base_model_fingerprint=data.get("base_model_fingerprint", ""),
            base_model_weights_fingerprint=data.get("base_model_weights_fingerprint", ""),
        )

    def status_proto(self, round_phase: pb.RoundPhase) -> pb.RunStatus:
        return pb.RunStatus(
            run_id=self.run_id,
            state=_STATE_TO_PROTO[self.phase],
            spec=self.spec.to_proto(),
            completed_rounds=self.completed_rounds,
            phase=round_phase,
            history=[r.to_proto() for r in self.history],
            message=self.message,
            started_at=self.started_at,
            base_model_fingerprint=self.base_model_fingerprint,
            base_model_weights_fingerprint=self.base_model_weights_fingerprint,
        )


def phase_proto(phase: RunPhase) -> pb.RunState:
    return _STATE_TO_PROTO[phase]
