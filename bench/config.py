"""The benchmark grid's YAML config, validated with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from shared.datasets import DATASETS
from shared.scenarios import SCENARIOS

BASELINES = ("zero_shot", "local")


class BenchConfigError(ValueError):
    """A bench.yaml that does not describe a runnable grid."""


@dataclass(frozen=True)
class DatasetEntry:
    """A data set as released at `root`, or (root null) its synthetic twin of this size."""

    name: str
    root: Path | None = None
    train: int = 240  # twin size, training split
    test: int = 80  # twin size, test split


@dataclass(frozen=True)
class Method:
    """Zero-shot, Local, or an FL strategy with its local-objective options."""

    name: str  # zero_shot, local, or a strategy name
    label: str  # how tables name it
    options: dict[str, Any] = field(default_factory=dict)  # RunSpec keys (eta, gamma_max, ...)


@dataclass(frozen=True)
class BenchConfig:
    """One grid; every FL cell runs real coordinator and silo-agent processes on loopback."""

    out: Path
    datasets: list[DatasetEntry]
    scenarios: list[dict[str, Any]]  # {"scenario": "missing", "beta": 0.5, "label": "β50"}
    methods: list[Method]
    seeds: list[int]
    model: Path | None = None  # a local model directory; None builds the tiny demo model
    trust_remote_code: bool = False  # run the model directory's own code (MiniCPM-V 2.6)
    format_steps: int = 150  # format pretraining of the tiny model (bench/base_model.py)
    clients: int = 4
    silos_per_round: int = 2
    rounds: int = 5
    local_epochs: int = 1  # per FL round
    local_baseline_epochs: int = 5  # the Local baseline trains each silo alone this long
    learning_rate: float = 1e-2
    batch_size: int = 8
    prompt: str = "original"  # the partition's prompt template


def _method(entry: Any, where: str) -> Method:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise BenchConfigError(f"{where}: a method is a name or {{name: ..., options}}")
    options = {k: v for k, v in entry.items() if k not in ("name", "label")}
    label = entry.get("label") or "+".join(
        [entry["name"], *(f"{k}={v}" for k, v in sorted(options.items()))]
    )
    return Method(name=entry["name"], label=str(label), options=options)


def load_config(path: Path) -> BenchConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BenchConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BenchConfigError(f"{path}: expected a mapping")
    known = {f.name for f in fields(BenchConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BenchConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    datasets = [
        DatasetEntry(**({"name": d} if isinstance(d, str) else d)) for d in data.get("datasets", [])
    ]
    for entry in datasets:
        if entry.name not in DATASETS:
            raise BenchConfigError(f"{path}: unknown data set {entry.name!r}")
    scenarios = [
        ({"scenario": s} if isinstance(s, str) else dict(s)) for s in data.get("scenarios", [])
    ]
    for scenario in scenarios:
        if scenario.get("scenario") not in SCENARIOS:
            raise BenchConfigError(f"{path}: unknown scenario in {scenario}")
    methods = [_method(m, str(path)) for m in data.get("methods", [])]
    if not (datasets and scenarios and methods and data.get("seeds")):
        raise BenchConfigError(f"{path}: datasets, scenarios, methods and seeds are required")
    values = {
        k: v
        for k, v in data.items()
        if k not in ("datasets", "scenarios", "methods", "out", "model")
    }
    return BenchConfig(
        out=Path(data.get("out", "bench-results")),
        datasets=datasets,
        scenarios=scenarios,
        methods=methods,
        model=Path(data["model"]) if data.get("model") else None,
        **values,
    )
