"""The coordinator's Prometheus metrics, on a registry of its own (one per coordinator)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from coordinator.run_state import RunRecord
from shared.errors import TASK_FAILURE_REASONS

# Every reason an update is refused for (coordinator/validation.py, coordinator/silo_service.py)
# and every phase a round times: their series exist at 0 from the start, so that rate() and
# increase() count the first rejection too (a series first seen at 1 counts as no increase).
REJECTION_REASONS = (
    "refused",
    "late",
    "disk_full",
    "payload",
    "malformed",
    "layout",
    "shape",
    "dtype",
    "non_finite",
    "magnitude",
    "metadata",
)
PHASES = ("training", "evaluation", "fold", "aggregation", "checkpoint")


@dataclass(kw_only=True)
class CoordinatorMetrics:
    """Every metric the coordinator exports; names follow Prometheus conventions."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._round_metrics()
        self._traffic_metrics()
        self._outcome_metrics()

    def _round_metrics(self) -> None:
        r = self.registry
        self.run_info = Gauge(
            "fedmllm_run_info",
            "The current run (value 1): its id and what it was started with",
            ["run_id", "strategy", "rounds", "silos_per_round", "prompt"],
            registry=r,
        )
        self.round = Gauge("fedmllm_round", "Round in progress (or last completed)", registry=r)
        self.rounds_completed = Counter(
            "fedmllm_rounds_completed_total", "Rounds aggregated and checkpointed", registry=r
        )
        self.silos_connected = Gauge(
            "fedmllm_silos_connected", "Silos with an open task stream", registry=r
        )
        self.silos_selected = Gauge(
            "fedmllm_round_silos_selected", "Silos selected for the current round", registry=r
        )
        self.round_duration = Histogram(
            "fedmllm_round_duration_seconds",
            "Wall time of a round, selection to checkpoint",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.phase_duration = Histogram(
            "fedmllm_phase_duration_seconds",
            "Wall time of each round phase (fold: per update, with what it added as it "
            "streamed in and the waiting updates it carried)",
            ["phase"],
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
            registry=r,
        )
        for phase in PHASES:
            self.phase_duration.labels(phase=phase)

    def _traffic_metrics(self) -> None:
        r = self.registry
        self.bytes_received = Counter(
            "fedmllm_received_bytes_total", "Update payload bytes received from silos", registry=r
        )
        self.bytes_sent = Counter(
            "fedmllm_sent_bytes_total", "Adapter payload bytes sent to silos", registry=r
        )
        self.updates_accepted = Counter(
            "fedmllm_updates_accepted_total",
            "Updates validated and folded into their round (also in attempts later reselected)",
            registry=r,
        )
        self.updates_rejected = Counter(
            "fedmllm_updates_rejected_total", "Updates refused, by reason", ["reason"], registry=r
        )
        self.updates_folded_live = Counter(
            "fedmllm_updates_folded_live_total",
            "Accepted updates folded as they streamed in (next in the fold's order)",
            registry=r,
        )
        self.updates_folded_carried = Counter(
            "fedmllm_updates_folded_carried_total",
            "Accepted updates that waited in their spools and were added along with the live fold"
            " of the update before them in the fold's order",
            registry=r,
        )
        self.fold_rebuilds = Counter(
            "fedmllm_fold_rebuilds_total",
            "Running sums rebuilt from the spools after a live fold's update was refused or late",
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.updates_rejected.labels(reason=reason)
        self.silo_bytes_received = Counter(
            "fedmllm_silo_received_bytes_total",
            "Update bytes received, per silo",
            ["silo"],
            registry=r,
        )
        self.silo_bytes_sent = Counter(
            "fedmllm_silo_sent_bytes_total", "Adapter bytes sent, per silo", ["silo"], registry=r
        )
        self.upload_duration = Histogram(
            "fedmllm_upload_duration_seconds",
            "Receiving one update, first chunk to validated",
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300),
            registry=r,
        )

    def _outcome_metrics(self) -> None:
        r = self.registry
        self.mean_gamma = Gauge(
            "fedmllm_round_mean_gamma",
            "Sample-weighted mean adaptive-regulariser gamma of the last round",
            registry=r,
        )
        self.silo_gamma = Gauge(
            "fedmllm_silo_gamma",
            "Adaptive-regulariser gamma a silo last reported",
            ["silo"],
            registry=r,
        )
        self.evaluation = Gauge(
            "fedmllm_eval_metric",
            "Sample-weighted mean of a federated evaluation metric",
            ["metric"],
            registry=r,
        )
        self.train_loss = Gauge(
            "fedmllm_round_train_loss",
            "Sample-weighted mean local train loss of the last round",
            registry=r,
        )
        self.silos_responded = Gauge(
            "fedmllm_round_silos_responded",
            "Silos whose update the last round aggregated",
            registry=r,
        )
        self.silos_dropped = Gauge(
            "fedmllm_round_silos_dropped",
            "Selected silos without an update in the last round",
            registry=r,
        )
        self.update_norm = Gauge(
            "fedmllm_round_update_norm", "L2 norm of the last round's mean delta", registry=r
        )
        self._fault_metrics()

    def _fault_metrics(self) -> None:
        r = self.registry
        self.silo_failures = Counter(
            "fedmllm_silo_failures_total",
            "Tasks silos reported they could not carry out, by reason",
            ["reason"],
            registry=r,
        )
        for reason in TASK_FAILURE_REASONS:
            self.silo_failures.labels(reason=reason)
        self.silos_missing = Gauge(
            "fedmllm_round_silos_missing",
            "Silos the next round still waits for before it can start (0: not waiting)",
            registry=r,
        )
        self.reselections = Counter(
            "fedmllm_round_reselections_total",
            "Round attempts that fell short of min_silos and were reselected",
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "fedmllm_checkpoint_full_total",
            "Rounds that could not be saved for want of disk (the run paused)",
            registry=r,
        )
        self.refused_calls = Counter(
            "fedmllm_refused_calls_total",
            "Calls the coordinator refused, by method and status code",
            ["method", "code"],
            registry=r,
        )

    def show_silo(self, silo: str) -> None:
        """A joining silo's series at 0, so that increase() counts its first round."""
        self.silo_bytes_received.labels(silo=silo)
        self.silo_bytes_sent.labels(silo=silo)

    def show_run(self, run: RunRecord) -> None:
        """Describe `run` as started or resumed, with its last round's values from its history:
        a restarted coordinator shows what it showed before, a new run nothing of the last one."""
        spec = run.spec
        self.run_info.clear()
        self.run_info.labels(
            run_id=run.run_id,
            strategy=spec.strategy,
            rounds=str(spec.rounds),
            silos_per_round=str(spec.silos_per_round),
            prompt=spec.prompt_variant or "default",
        ).set(1)
        self.evaluation.clear()
        self.silo_gamma.clear()
        self.round.set(run.completed_rounds)
        last = run.history[-1] if run.history else None
        self.train_loss.set(last.mean_train_loss if last else math.nan)
        self.update_norm.set(last.update_norm if last else math.nan)
        self.mean_gamma.set(last.mean_gamma if last else math.nan)
        self.silos_responded.set(len(last.contributed) if last else 0)
        self.silos_dropped.set(len(last.selected) - len(last.contributed) if last else 0)
        evaluated = [r.evaluation for r in run.history if r.evaluation]
        for name, value in (evaluated[-1] if evaluated else {}).items():
            self.evaluation.labels(metric=name).set(value)
