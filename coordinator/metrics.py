"""The coordinator's Prometheus metrics, on a registry of its own (one per coordinator)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class CoordinatorMetrics:
    """Every metric the coordinator exports; names follow Prometheus conventions."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
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
            "Wall time of each round phase",
            ["phase"],
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
            registry=r,
        )
        self.bytes_received = Counter(
            "fedmllm_received_bytes_total", "Update payload bytes received from silos", registry=r
        )
        self.bytes_sent = Counter(
            "fedmllm_sent_bytes_total", "Adapter payload bytes sent to silos", registry=r
        )
        self.updates_accepted = Counter(
            "fedmllm_updates_accepted_total", "Updates validated and aggregated", registry=r
        )
        self.updates_rejected = Counter(
            "fedmllm_updates_rejected_total", "Updates refused, by reason", ["reason"], registry=r
        )
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
        self.silo_failures = Counter(
            "fedmllm_silo_failures_total",
            "Tasks silos reported they could not carry out, by reason",
            ["reason"],
            registry=r,
        )
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
        self.update_norm = Gauge(
            "fedmllm_round_update_norm", "L2 norm of the last round's mean delta", registry=r
        )
