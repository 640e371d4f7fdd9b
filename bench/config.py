"""The benchmark grid's YAML config, validated with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bench.data.datasets import CRISISMMD_LABELS, DATASETS, SLAKE_LANGUAGES
from bench.data.scenarios import SCENARIOS

BASELINES = ("zero_shot", "local")


class BenchConfigError(ValueError):
    """A bench.yaml that does not describe a runnable grid."""


@dataclass(frozen=True)
class DatasetEntry:
    """A data set as released at `root`, or (root null) its synthetic twin of this size; or,
    with `parts`, several data sets partitioned together and reported under the label `name`
    (the medical setting: vqa_rad and medalpaca to train on, vqa_rad and slake to test on)."""

    name: str
    root: Path | None = None
    train: int = 240  # twin size, training split
    test: int = 80  # twin size, test split
    parts: tuple[DatasetEntry, ...] = ()

    @property
    def datasets(self) -> tuple[DatasetEntry, ...]:
        """The released data sets this entry partitions."""
        return self.parts or (self,)

    @property
    def test_only(self) -> bool:
        return all(DATASETS[d.name].test_only for d in self.datasets)


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
    # {"scenario": "missing", "beta": 0.5, "label": "β50", "seeds": [0]}; seeds: this
    # scenario's own (fewer) seeds instead of the grid's
    scenarios: list[dict[str, Any]]
    methods: list[Method]
    seeds: list[int]
    model: Path | None = None  # a local model directory; None builds the tiny demo model
    trust_remote_code: bool = False  # run the model directory's own code (MiniCPM-V 2.6)
    format_steps: int = 150  # format pretraining of the tiny model (bench/base_model.py)
    base_layers: int = 2  # decoder layers of the tiny model (>= 2 * mask_skip_layers + 1 for
    # the regulariser's mask to hold any layer)
    clients: int = 4
    silos_per_round: int = 2
    rounds: int = 5
    local_epochs: int = 1  # per FL round
    local_baseline_epochs: int = 5  # the Local baseline trains each silo alone this long
    learning_rate: float = 1e-2
    batch_size: int = 8
    prompt: str = "original"  # the partition's prompt template
    slake_languages: str = "en"  # SLAKE's questions: "en" (English) or "all" (the paper's)
    crisismmd_labels: str = "all"  # CrisisMMD's split: "all" (the paper's) or "agreed"


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


def _dataset(entry: Any, where: str) -> DatasetEntry:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise BenchConfigError(f"{where}: a data set is a name or {{name: ..., root, parts}}")
    unknown = sorted(set(entry) - {f.name for f in fields(DatasetEntry)})
    if unknown:
        raise BenchConfigError(f"{where}: {entry['name']}: unknown key(s) {', '.join(unknown)}")
    parts = tuple(_dataset(p, where) for p in entry.get("parts", []))
    if any(p.parts for p in parts):
        raise BenchConfigError(f"{where}: {entry['name']}: a part cannot have parts")
    for name in [p.name for p in parts] or [entry["name"]]:
        if name not in DATASETS:
            raise BenchConfigError(f"{where}: unknown data set {name!r}")
    root = Path(entry["root"]) if entry.get("root") else None
    return DatasetEntry(**{**entry, "root": root, "parts": parts})


def _check_variants(data: dict[str, Any], where: str) -> None:
    for key, allowed in (
        ("slake_languages", SLAKE_LANGUAGES),
        ("crisismmd_labels", CRISISMMD_LABELS),
    ):
        if key in data and data[key] not in allowed:
            raise BenchConfigError(f"{where}: {key} must be one of {', '.join(allowed)}")


def _check_test_only(datasets: list[DatasetEntry], methods: list[Method], where: str) -> None:
    trained = [m.label for m in methods if m.name != "zero_shot"]
    for entry in (d for d in datasets if d.test_only and trained):
        raise BenchConfigError(
            f"{where}: {entry.name} has no training split, so only zero_shot runs on it "
            f"(not {', '.join(trained)}); give it as a part beside training data sets"
        )


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
    datasets = [_dataset(d, str(path)) for d in data.get("datasets", [])]
    scenarios = [
        ({"scenario": s} if isinstance(s, str) else dict(s)) for s in data.get("scenarios", [])
    ]
    for scenario in scenarios:
        if scenario.get("scenario") not in SCENARIOS:
            raise BenchConfigError(f"{path}: unknown scenario in {scenario}")
        seeds = scenario.get("seeds", [0])
        if not (isinstance(seeds, list) and seeds and all(isinstance(x, int) for x in seeds)):
            raise BenchConfigError(f"{path}: {scenario}: seeds must be a list of integers")
    methods = [_method(m, str(path)) for m in data.get("methods", [])]
    if not (datasets and scenarios and methods and data.get("seeds")):
        raise BenchConfigError(f"{path}: datasets, scenarios, methods and seeds are required")
    _check_variants(data, str(path))
    _check_test_only(datasets, methods, str(path))
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
