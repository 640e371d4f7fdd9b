"""The Prometheus and Grafana files hold together with each other and with the compose file:
scrape targets are the services and their metrics ports, the dashboard picks its data source
from a variable and names every line, the provisioning paths are the ones compose mounts."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.deploy.docker_files import DOCKER
from tests.deploy.packaging import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"


def _yaml(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def test_scrape_targets_are_the_compose_services_and_their_metrics_ports() -> None:
    services = _yaml("deploy/docker/compose.yaml")["services"]
    jobs = {
        job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
        for job in _yaml("deploy/prometheus/prometheus.yml")["scrape_configs"]
    }
    assert set(jobs) == {"fedmllm-coordinator", "fedmllm-silo"}
    for target in set.union(*jobs.values()):
        host, port = target.split(":")
        command = services[host]["command"]
        assert command[command.index("--metrics-port") + 1] == port, target


def test_compose_mounts_what_the_provisioning_reads() -> None:
    mounts = {
        volume.split(":")[1]: (DOCKER / volume.split(":")[0]).resolve()
        for service in ("prometheus", "grafana")
        for volume in _yaml("deploy/docker/compose.yaml")["services"][service]["volumes"]
    }
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS / "prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == PROMETHEUS / "rules"
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (provider,) = _yaml("deploy/grafana/provisioning/dashboards/fedmllm.yml")["providers"]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    (source,) = _yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )


def test_dashboard_takes_its_data_source_from_a_variable_and_names_every_line() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "fedmllm.json").read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    chosen = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == chosen, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == chosen, panel["title"]
            assert target["legendFormat"].strip(), f"{panel['title']}: {target['expr']}"
