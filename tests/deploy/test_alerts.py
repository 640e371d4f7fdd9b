"""The shipped Prometheus alert rules load (`promtool check rules`) and fire when they should,
and only then (`promtool test rules` on tests/deploy/alerts.test.yml). `.ci/run` installs
Debian's prometheus, which brings promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.packaging import ROOT

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian's prometheus) is missing"
)
PROMETHEUS = ROOT / "deploy" / "prometheus"


def _promtool(*argv: str, cwd: Path) -> str:
    done = subprocess.run([str(PROMTOOL), *argv], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_and_scrape_config_load() -> None:
    shipped = yaml.safe_load((PROMETHEUS / "rules" / "fedmllm.yml").read_text())
    count = sum(len(group["rules"]) for group in shipped["groups"])
    checked = _promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert f"SUCCESS: {count} rules found" in checked


def test_alerts_fire_when_they_should() -> None:
    _promtool("test", "rules", "alerts.test.yml", cwd=Path(__file__).parent)
