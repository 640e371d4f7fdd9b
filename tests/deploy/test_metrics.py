"""Metrics that tell the truth: labelled counters exist at 0 before their first event, a
resumed run shows its last round again, and every silo series names its silo."""

from __future__ import annotations

import ast
import math
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import PHASES, REJECTION_REASONS, CoordinatorMetrics
from coordinator.run_state import RoundRecord, RunRecord, RunSpec
from silo_agent.metrics import TASK_KINDS, SiloMetrics, certificate_name
from tests.deploy.packaging import ROOT


def _strings(node: ast.expr | None) -> set[str]:
    return {
        c.value
        for c in ast.walk(node or ast.Constant(None))
        if isinstance(c, ast.Constant) and isinstance(c.value, str)
    }


def _literal(node: ast.expr | None) -> set[str]:
    return {node.value} if isinstance(node, ast.Constant) and isinstance(node.value, str) else set()


def _given_as(keyword: str, package: str) -> set[str]:
    """String literals passed as `keyword=` or defaulting a parameter `keyword` in `package`
    (shared/pki's revocation reasons are another vocabulary)."""
    found: set[str] = set()
    for source in (ROOT / package).rglob("*.py"):
        if "pki" in source.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call):
                found |= {s for k in node.keywords if k.arg == keyword for s in _literal(k.value)}
            elif isinstance(node, ast.FunctionDef):
                named = node.args.args[len(node.args.args) - len(node.args.defaults) :]
                pairs = [
                    *zip(named, node.args.defaults, strict=True),
                    *zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True),
                ]
                found |= {s for a, d in pairs if a.arg == keyword for s in _literal(d)}
    return found


def _rejection_reasons() -> set[str]:
    """`reason=` constants, plus what the coordinator hands to `reject()` directly or through a
    variable named `reason`."""
    found = _given_as("reason", "coordinator") | _given_as("reason", "shared")
    for source in (ROOT / "coordinator").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "reject":
                found |= {s for a in node.args for s in _literal(a)}
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") == "reason" for t in node.targets
            ):
                found |= _strings(node.value)
    return found


def test_known_reasons_and_phases_are_the_ones_the_coordinator_uses() -> None:
    assert _rejection_reasons() == set(REJECTION_REASONS)
    assert _given_as("phase", "coordinator") == set(PHASES)


def test_every_rejection_reason_and_phase_is_at_zero_before_the_first() -> None:
    registry = CoordinatorMetrics().registry
    for reason in REJECTION_REASONS:
        value = registry.get_sample_value("fedmllm_updates_rejected_total", {"reason": reason})
        assert value == 0.0, reason
    for phase in PHASES:
        assert (
            registry.get_sample_value("fedmllm_phase_duration_seconds_count", {"phase": phase})
            == 0.0
        )
    assert registry.get_sample_value("fedmllm_rounds_completed_total") == 0.0


def _round(index: int, *, evaluation: dict[str, float] | None = None) -> RoundRecord:
    return RoundRecord(
        round=index,
        selected=["silo-1", "silo-2", "silo-3"],
        contributed=["silo-1", "silo-2"],
        num_samples=96,
        mean_train_loss=2.0 / index,
        bytes_sent=1000,
        bytes_received=900,
        seconds=3.0,
        rejected=0,
        mean_gamma=0.25,
        evaluation=evaluation or {},
        update_norm=0.5 * index,
    )


def test_a_resumed_run_shows_its_last_round_and_a_new_run_nothing_of_the_last() -> None:
    metrics = CoordinatorMetrics()
    resumed = RunRecord(
        run_id="run-a",
        spec=RunSpec(rounds=9, strategy="fedadam"),
        history=[_round(1), _round(2, evaluation={"accuracy": 0.75}), _round(3)],
    )
    metrics.show_run(resumed)
    value = metrics.registry.get_sample_value
    info = {"run_id": "run-a", "strategy": "fedadam", "rounds": "9", "silos_per_round": "2"}
    assert value("fedmllm_run_info", {**info, "prompt": "default"}) == 1.0
    assert value("fedmllm_round") == 3.0
    assert value("fedmllm_round_train_loss") == pytest.approx(2.0 / 3)
    assert value("fedmllm_round_update_norm") == 1.5
    assert (value("fedmllm_round_silos_responded"), value("fedmllm_round_silos_dropped")) == (2, 1)
    assert value("fedmllm_eval_metric", {"metric": "accuracy"}) == 0.75

    metrics.show_run(RunRecord(run_id="run-b", spec=RunSpec()))
    assert value("fedmllm_run_info", {**info, "prompt": "default"}) is None
    assert value("fedmllm_eval_metric", {"metric": "accuracy"}) is None
    assert value("fedmllm_round") == 0.0
    assert math.isnan(value("fedmllm_round_train_loss") or 0.0)


def test_silo_series_are_scraped_with_the_silo_label() -> None:
    metrics = SiloMetrics(silo="hospital-a")
    metrics.steps.inc(7)
    metrics.samples.labels(split="train").set(48)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            scraped = reply.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.name.startswith("fedmllm_")
    }
    assert all(dict(labels).get("silo") == "hospital-a" for _, labels in samples)
    assert samples[("fedmllm_silo_steps_total", (("silo", "hospital-a"),))] == 7
    assert samples[("fedmllm_silo_samples", (("silo", "hospital-a"), ("split", "train")))] == 48
    for kind in TASK_KINDS:
        assert samples[("fedmllm_silo_rounds_total", (("kind", kind), ("silo", "hospital-a")))] == 0


def test_the_silo_label_is_the_certificates_common_name(certs: Path, tmp_path: Path) -> None:
    assert certificate_name(certs / "silo-1.pem") == "silo-1"
    with pytest.raises(FileNotFoundError, match=r"gone\.pem"):
        certificate_name(tmp_path / "gone.pem")
    with pytest.raises(ValueError, match=r"silo-1\.key is not a PEM certificate"):
        certificate_name(certs / "silo-1.key")
