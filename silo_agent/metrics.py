"""The silo agent's own Prometheus metrics (nothing about the data beyond counts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class SiloMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.samples = Gauge(
            "fedmllm_silo_samples", "Samples held, per split", ["split"], registry=r
        )
        self.steps = Counter("fedmllm_silo_steps_total", "Local optimizer steps", registry=r)
        self.loss = Gauge(
            "fedmllm_silo_train_loss", "Mean local train loss of the last round", registry=r
        )
        self.step_rate = Gauge(
            "fedmllm_silo_steps_per_second",
            "Local optimizer steps per second in the last round",
            registry=r,
        )
        self.last_round = Gauge(
            "fedmllm_silo_last_round", "Last round this silo trained", registry=r
        )
        self.rounds = Counter(
            "fedmllm_silo_rounds_total", "Round tasks completed, by kind", ["kind"], registry=r
        )
