"""`fedmllm-bench --config bench.yaml`: run the grid, resume it, report it.

Cells are (data set, scenario, method, seed). Zero-shot and Local run in this process; every
FL cell runs real coordinator and silo-agent processes on loopback. Each finished cell is one
line of OUT/results.jsonl, so an interrupted grid resumes where it stopped. At the end
OUT/results.md holds the tables and OUT/plots/ the per-round figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.base_model import format_pretrained_model
from bench.baselines import local, zero_shot
from bench.cli import parser as bench_parser
from bench.config import (
    BASELINES,
    BenchConfig,
    BenchConfigError,
    DatasetEntry,
    Method,
    load_config,
)
from bench.data.datasets import DATASETS
from bench.data.partition import main as partition_main
from bench.data.twins import TWINS
from bench.federated import EVALUATOR, FederationProcesses
from bench.report import plots, tables
from coordinator.run_state import RunSpec
from shared.adapter import RemoteCodeRequired, load_model_config, model_auto_class
from shared.pki import create_federation


def _scenario_label(scenario: dict[str, Any]) -> str:
    return str(
        scenario.get("label")
        or "-".join(
            [
                scenario["scenario"],
                *(f"{k}{v}" for k, v in sorted(scenario.items()) if k not in ("scenario", "seeds")),
            ]
        )
    )


def _variants(config: BenchConfig, entry: DatasetEntry) -> dict[str, str]:
    """The release variants this entry's data sets are read in (SLAKE's languages, CrisisMMD's
    split), kept with each result so a table can say which it shows."""
    names = {d.name for d in entry.datasets}
    variants = {"slake_languages": config.slake_languages} if "slake" in names else {}
    if "crisismmd" in names:
        variants["crisismmd_labels"] = config.crisismmd_labels
    return variants


def _cell_key(
    config: BenchConfig, entry: DatasetEntry, scenario: dict[str, Any], method: Method, seed: int
) -> str:
    variants = [f"{k}={v}" for k, v in _variants(config, entry).items()]
    return "|".join([entry.name, *variants, _scenario_label(scenario), method.label, str(seed)])


def _dataset_root(config: BenchConfig, entry: DatasetEntry) -> Path:
    if entry.root is not None:
        return entry.root
    root = config.out / "datasets" / f"{entry.name}-{entry.train}-{entry.test}"
    if not root.exists():
        TWINS[entry.name](root, train=entry.train, test=entry.test, seed=0)
    return root


def _partition(
    config: BenchConfig, entry: DatasetEntry, scenario: dict[str, Any], seed: int
) -> Path:
    variants = "".join(f"-{v}" for v in _variants(config, entry).values())
    out = config.out / "partitions" / f"{entry.name}{variants}-{_scenario_label(scenario)}-s{seed}"
    if not (out / "partition.json").exists():
        flags = {
            "alpha": "--alpha",
            "beta": "--beta",
            "keep_prob": "--keep-prob",
            "image_text_ratio": "--image-text-ratio",
        }
        extra = [x for k, v in scenario.items() if k in flags for x in (flags[k], str(v))]
        datasets = [
            x
            for part in entry.datasets
            for x in ("--dataset", part.name, "--root", str(_dataset_root(config, part)))
        ]
        partition_main(
            [
                *datasets,
                "--scenario",
                scenario["scenario"],
                "--clients",
                str(config.clients),
                "--seed",
                str(seed),
                "--prompt",
                config.prompt,
                "--slake-languages",
                config.slake_languages,
                "--crisismmd-labels",
                config.crisismmd_labels,
                "--overwrite",
                "--out",
                str(out),
                *extra,
            ]
        )
    return out


def _model(config: BenchConfig) -> Path:
    if config.model is not None:
        return config.model
    path = config.out / "model"
    if not (path / "config.json").exists():
        trained = [
            p.name for d in config.datasets for p in d.datasets if not DATASETS[p.name].test_only
        ]
        format_pretrained_model(
            path,
            datasets=list(dict.fromkeys(trained)),
            steps=config.format_steps,
            layers=config.base_layers,
        )
    return path


def _zero_shot(
    config: BenchConfig, model: Path, test_dir: Path, seed: int, cache: dict[str, Any]
) -> dict[str, Any]:
    """The untouched base model depends only on the test split (a fresh adapter adds zero
    whatever its seed), so it is evaluated once per distinct test split and model."""
    digest = hashlib.sha256((test_dir / "test.jsonl").read_bytes() + str(model).encode())
    key = digest.hexdigest()
    if key not in cache:
        remote = config.trust_remote_code
        cache[key] = zero_shot(model, test_dir, seed=seed, trust_remote_code=remote)
    return {"metrics": cache[key], "rounds": [], "zero_shot_test_digest": key[:16]}


def _run_cell(
    config: BenchConfig,
    method: Method,
    partition: Path,
    model: Path,
    seed: int,
    federation: FederationProcesses | None,
    zero_shot_cache: dict[str, Any],
) -> dict[str, Any]:
    clients = sorted(p for p in partition.iterdir() if p.name.startswith("client-"))
    test_dir = partition / "test"
    if method.name == "zero_shot":
        return _zero_shot(config, model, test_dir, seed, zero_shot_cache)
    if method.name == "local":
        return {
            "metrics": local(
                model,
                clients,
                test_dir,
                seed=seed,
                epochs=config.local_baseline_epochs,
                learning_rate=config.learning_rate,
                batch_size=config.batch_size,
                trust_remote_code=config.trust_remote_code,
            ),
            "rounds": [],
        }
    assert federation is not None
    spec = RunSpec(
        rounds=config.rounds,
        silos_per_round=config.silos_per_round,
        min_silos=config.silos_per_round,
        round_deadline_s=600,
        seed=seed,
        learning_rate=config.learning_rate,
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        strategy=method.name,
        eval_every=config.rounds,
        **method.options,
    )
    return federation.run(spec)


def _processes(config: BenchConfig, partition: Path, model: Path) -> FederationProcesses:
    return FederationProcesses(
        workdir=config.out / "runs" / partition.name,
        model=model,
        certs=config.out / "certs",
        client_dirs=sorted(p for p in partition.iterdir() if p.name.startswith("client-")),
        test_dir=partition / "test",
        trust_remote_code=config.trust_remote_code,
    )


def run_grid(config: BenchConfig) -> list[dict[str, Any]]:
    config.out.mkdir(parents=True, exist_ok=True)
    results_path = config.out / "results.jsonl"
    done = (
        {
            json.loads(line)["key"]: json.loads(line)
            for line in results_path.read_text().splitlines()
        }
        if results_path.exists()
        else {}
    )
    create_federation(
        config.out / "certs",
        hosts=["localhost", "127.0.0.1"],
        silos=[*(f"client-{i:02d}" for i in range(config.clients)), EVALUATOR],
        admins=["admin"],
    )
    # The base model's pretraining and the baselines run here, the baselines beside the idle
    # agents of a partition: one thread, as each agent (two threads on a loaded 2-core machine
    # made a Zero-shot cell 9 times slower).
    torch.set_num_threads(1)
    model = _model(config)
    zero_shot_cache: dict[str, Any] = {}
    cells = [
        (d, s, m, seed)
        for d in config.datasets
        for s in config.scenarios
        for seed in s.get("seeds", config.seeds)
        for m in config.methods
    ]
    with contextlib.ExitStack() as stack:
        federation: FederationProcesses | None = None
        serving: Path | None = None  # the partition the running processes serve
        for number, (entry, scenario, method, seed) in enumerate(cells, start=1):
            key = _cell_key(config, entry, scenario, method, seed)
            if key in done:
                print(f"[{number}/{len(cells)}] {key}: done earlier", flush=True)
                continue
            started = time.monotonic()
            partition = _partition(config, entry, scenario, seed)
            if method.name not in BASELINES and serving != partition:
                stack.close()  # the previous partition's processes
                federation = stack.enter_context(_processes(config, partition, model))
                serving = partition
            result = _run_cell(config, method, partition, model, seed, federation, zero_shot_cache)
            record = {
                "key": key,
                "dataset": entry.name,
                **_variants(config, entry),
                "scenario": _scenario_label(scenario),
                "method": method.label,
                "seed": seed,
                "seconds": round(time.monotonic() - started, 1),
                **result,
            }
            with results_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            done[key] = record
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items()))
            print(f"[{number}/{len(cells)}] {key}: {shown} ({record['seconds']:.0f} s)", flush=True)
    results = [done[k] for k in dict.fromkeys(_cell_key(config, *cell) for cell in cells)]
    (config.out / "results.md").write_text(tables(results))
    plots(results, config.out / "plots")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except BenchConfigError as exc:
        sys.exit(f"fedmllm-bench: {exc}")
    if args.trust_remote_code:
        config = replace(config, trust_remote_code=True)
    if config.model is not None:
        try:  # a model that needs its own code fails here, in one line, not in a cell
            remote = config.trust_remote_code
            model_auto_class(
                load_model_config(config.model, trust_remote_code=remote), trust_remote_code=remote
            )
        except (RemoteCodeRequired, OSError, ValueError) as exc:
            sys.exit(f"fedmllm-bench: model {config.model}: {exc}")
    print(
        f"grid: {len(config.datasets)} data set(s) x {len(config.scenarios)} scenario(s) x "
        f"{len(config.methods)} method(s) x {len(config.seeds)} seed(s); results in "
        f"{config.out}",
        flush=True,
    )
    run_grid(config)
    print((config.out / "results.md").read_text())


if __name__ == "__main__":
    main()
