"""The deployment files hold together: every path the compose file, the Dockerfiles and the
Grafana provisioning name exists, and the commands they run are this project's commands with
flags those commands accept. (No Docker engine runs on the test machines: images are not built.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from coordinator.__main__ import parse_args as coordinator_args
from silo_agent.__main__ import _parser as silo_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def test_dockerfiles_copy_what_exists() -> None:
    for dockerfile in (DEPLOY / "docker").glob("*.Dockerfile"):
        sources = re.findall(r"^COPY (\S+(?: \S+)*) \S+$", dockerfile.read_text(), re.MULTILINE)
        assert sources, dockerfile
        for line in sources:
            for source in line.split():
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"


def test_compose_services_run_valid_commands(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"coordinator", "silo-1", "silo-2", "silo-3", "prometheus", "grafana"} <= set(services)
    coordinator_args(services["coordinator"]["command"] + ["--checkpoint-dir", str(tmp_path)])
    for name in ("silo-1", "silo-2", "silo-3"):
        args = silo_parser().parse_args(services[name]["command"])
        assert args.cert.name == f"{name}.pem"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("../"):
                assert (DEPLOY / "docker" / source).resolve().exists(), source


def test_prometheus_and_grafana_provisioning() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"fedmllm-coordinator", "fedmllm-silo"}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fedmllm.json").read_text())
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = source["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.parametrize("unit", ["fedmllm-coordinator.service", "fedmllm-silo.service"])
def test_systemd_units_run_valid_commands(unit: str, tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    command = re.search(r"^ExecStart=(.+)$", text.replace("\\\n", " "), re.MULTILINE)
    assert command is not None
    words = command.group(1).split()
    assert {"[Unit]", "[Service]", "[Install]"} <= set(text.split())
    if "coordinator" in unit:
        coordinator_args(words[1:])
    else:
        silo_parser().parse_args(words[1:])
