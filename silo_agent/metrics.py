"""The silo agent's own Prometheus metrics (nothing about the data beyond counts), each series
labelled with the silo's identity."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

TASK_KINDS = ("train", "evaluate")  # their round counters exist at 0 from the start


def certificate_name(path: Path) -> str:
    """The common name of the PEM certificate at `path`: the silo's identity in the federation."""
    if not path.is_file():
        raise FileNotFoundError(f"certificate not found: {path}")
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path} is not a PEM certificate: {exc}") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError(f"certificate {path} has no common name")
    return str(names[0].value)


class _SiloLabelled(Collector):
    """Serves the series of `source` with `silo=<name>` added, as one scrape target's identity."""

    def __init__(self, *, source: CollectorRegistry, silo: str) -> None:
        self._source = source
        self._silo = silo

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = {"silo": self._silo, **sample.labels}
                labelled.add_sample(
                    sample.name, labels, sample.value, sample.timestamp, sample.exemplar
                )
            yield labelled


@dataclass(kw_only=True)
class SiloMetrics:
    """Every metric the silo agent exports; `registry` serves them with the silo label."""

    silo: str = ""  # the silo's identity (its certificate's common name); "" leaves it out
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = CollectorRegistry()
        self.registry.register(_SiloLabelled(source=r, silo=self.silo))
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
        for kind in TASK_KINDS:
            self.rounds.labels(kind=kind)
