"""Run specifications from a YAML run config file and command-line flags, validated."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from coordinator.run_state import RunSpec

# flag, RunSpec field, type, help
FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--rounds", "rounds", int, "federated rounds"),
    ("--silos-per-round", "silos_per_round", int, "K silos selected per round"),
    ("--min-silos", "min_silos", int, "fewest updates a round may aggregate"),
    ("--deadline", "round_deadline_s", float, "seconds a round waits for updates"),
    ("--seed", "seed", int, "seeds selection, the initial adapter and shuffling"),
    ("--lr", "learning_rate", float, "base client learning rate"),
    ("--lr-schedule", "lr_schedule", str, "cosine (1%% warm-up) or constant"),
    ("--local-epochs", "local_epochs", int, "local epochs per round"),
    ("--batch-size", "batch_size", int, "local batch size"),
    (
        "--strategy",
        "strategy",
        str,
        "fedavg, fedavgm, fedadam, fedyogi, fedadagrad, scaffold or fednova",
    ),
    ("--eta", "eta", float, "server learning rate (default: the strategy's)"),
    ("--tau", "tau", float, "FedOpt adaptivity"),
    ("--beta1", "beta1", float, "FedOpt first-moment decay"),
    ("--beta2", "beta2", float, "FedOpt second-moment decay"),
    ("--momentum", "momentum", float, "FedAvgM server momentum"),
    ("--mu", "proximal_mu", float, "FedProx mu (0: off)"),
    ("--gamma-max", "gamma_max", float, "adaptive masked proximal regulariser (0: off; paper 0.1)"),
    ("--mask-skip-layers", "mask_skip_layers", int, "decoder layers unmasked at each end"),
    ("--prompt", "prompt_variant", str, "original or improved (modality-agnostic) templates"),
    ("--eval-every", "eval_every", int, "federated evaluation every N rounds (0: off)"),
    ("--max-samples-per-silo", "max_samples_per_silo", int, "cap on a silo's declared samples"),
    ("--max-weight-share", "max_weight_share", float, "cap on one update's share of a round"),
    ("--aggregator", "aggregator", str, "mean, trimmed_mean, median, krum or multi_krum"),
    ("--trim-fraction", "trim_fraction", float, "trimmed_mean: fraction cut at each end"),
    ("--byzantine-silos", "byzantine_silos", int, "krum / multi_krum: silos tolerated (f)"),
    ("--multi-krum-keep", "multi_krum_keep", int, "multi_krum: updates averaged (0: K - f)"),
    ("--clip-norm", "clip_norm", float, "per-update L2 clipping bound (0: off)"),
    ("--clip-median-factor", "clip_median_factor", float, "clip to this x the median norm"),
    ("--wire-dtype", "wire_dtype", str, "dtype updates travel in: float32, bfloat16, float16"),
)


class RunConfigError(ValueError):
    """A run config file or flag combination that does not make a valid RunSpec."""


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML run config with RunSpec keys")
    for flag, field, kind, text in FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RunConfigError(f"{path}: cannot read run config: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RunConfigError(f"{path}: a run config is a mapping of RunSpec keys")
    known = {f.name for f in fields(RunSpec)}
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(values.keys() - known)
    if unknown:
        raise RunConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return values


def spec_from(args: argparse.Namespace) -> RunSpec:
    """The config file's values, overridden by any flag given, validated."""
    values = read_config(args.config) if args.config else {}
    values |= {
        field: getattr(args, field) for _, field, _, _ in FLAGS if getattr(args, field) is not None
    }
    try:
        spec = RunSpec(**values)
    except TypeError as exc:
        raise RunConfigError(str(exc)) from exc
    problems = spec.problems()
    if problems:
        where = f"{args.config}: " if args.config else ""
        raise RunConfigError(where + "; ".join(problems))
    return spec
