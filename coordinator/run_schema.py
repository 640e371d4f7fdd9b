"""Every run option once: its flag (also its key in a run config file), its RunSpec field, its
type and range, and its help. Flags, config files and the coordinator all validate through it."""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova")
AGGREGATORS = ("mean", "trimmed_mean", "median", "krum", "multi_krum")
WIRE_DTYPES = ("float32", "bfloat16", "float16", "int8")
MANY = 100_000  # rounds, silos, epochs: far above any federation, far below the wire's uint32
SEED_MAX = 2**32 - 1  # torch and NumPy generators take 32-bit seeds derived from it
DAY_S = 86_400.0


@dataclass(frozen=True)
class RunOption:
    """One option: `flag` without its dashes is also its config file key."""

    flag: str
    field: str
    kind: type | tuple[str, ...]  # int, float, or the allowed strings
    help: str
    _: KW_ONLY
    low: float | None = None  # inclusive unless `low_open`
    high: float | None = None  # inclusive unless `high_open`
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None allowed: the strategy's default
    aliases: tuple[tuple[str, str], ...] = ()  # (short name, the allowed string it stands for)

    @property
    def key(self) -> str:
        return self.flag.removeprefix("--")

    @property
    def name(self) -> str:
        """The field, with the flag's spelling when it differs: what both users know it by."""
        same = self.key.replace("-", "_") == self.field
        return self.field if same else f"{self.field} (--{self.key})"

    def range_text(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {_shown(self.low)}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='} {_shown(self.high)}"
        return " and ".join(t for t in (low, high) if t)

    def check(self, value: Any) -> Any:
        """`value` as this option's type (strings of numbers are read), or ValueError saying
        what is allowed."""
        if value is None and self.optional:
            return None
        if isinstance(self.kind, tuple):
            value = dict(self.aliases).get(value, value)
            if value not in self.kind:
                shown = ", ".join(c or repr(c) for c in self.kind)
                raise ValueError(f"{self.name} must be one of {shown} (got {value!r})")
            return value
        number = _number(value, self.kind)
        if number is None:
            wanted = "an integer" if self.kind is int else "a number"
            raise ValueError(f"{self.name} must be {wanted} (got {value!r})")
        if not self._in_range(number):
            finite = "a finite number " if self.kind is float else ""
            raise ValueError(f"{self.name} must be {finite}{self.range_text()} (got {value!r})")
        return number

    def _in_range(self, number: float) -> bool:
        if not math.isfinite(number):
            return False
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        return not (
            self.high is not None
            and (number > self.high or (self.high_open and number == self.high))
        )


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _number(value: Any, kind: type) -> float | int | None:
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, int):
            return value
        text = value.strip() if isinstance(value, str) else ""
        return int(text) if text.lstrip("+-").isdigit() else None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


OPTIONS: tuple[RunOption, ...] = (
    RunOption("--rounds", "rounds", int, "federated rounds", low=1, high=MANY),
    RunOption(
        "--silos-per-round", "silos_per_round", int, "K silos selected per round", low=1, high=MANY
    ),
    RunOption(
        "--min-silos", "min_silos", int, "fewest updates a round may aggregate", low=1, high=MANY
    ),
    RunOption(
        "--deadline",
        "round_deadline_s",
        float,
        "seconds a round waits for updates",
        low=0,
        high=7 * DAY_S,
        low_open=True,
    ),
    RunOption(
        "--wait-timeout",
        "wait_timeout_s",
        float,
        "give up a round short of silos after this many seconds (0: wait)",
        low=0,
        high=30 * DAY_S,
    ),
    RunOption(
        "--seed",
        "seed",
        int,
        "seeds selection, the initial adapter and shuffling",
        low=0,
        high=SEED_MAX,
    ),
    RunOption(
        "--lr", "learning_rate", float, "base client learning rate", low=0, high=10, low_open=True
    ),
    RunOption(
        "--lr-schedule",
        "lr_schedule",
        ("cosine", "constant"),
        "learning-rate schedule over the rounds (cosine: after a short warm-up)",
    ),
    RunOption("--local-epochs", "local_epochs", int, "local epochs per round", low=1, high=1000),
    RunOption("--batch-size", "batch_size", int, "local batch size", low=1, high=65_536),
    RunOption(
        "--local-optimizer",
        "local_optimizer",
        ("", "sgd", "adamw"),
        "silos' optimizer ('': the strategy's)",
    ),
    RunOption("--strategy", "strategy", STRATEGIES, "server strategy (docs/strategies.md)"),
    RunOption(
        "--eta",
        "eta",
        float,
        "server learning rate (unset: the strategy's)",
        low=0,
        high=1e3,
        low_open=True,
        optional=True,
    ),
    RunOption("--tau", "tau", float, "FedOpt adaptivity", low=0, high=1e3, low_open=True),
    RunOption(
        "--beta1",
        "beta1",
        float,
        "FedOpt first-moment decay (unset: 0.9; FedAdagrad 0)",
        low=0,
        high=1,
        high_open=True,
        optional=True,
    ),
    RunOption(
        "--beta2", "beta2", float, "FedOpt second-moment decay", low=0, high=1, high_open=True
    ),
    RunOption(
        "--momentum", "momentum", float, "FedAvgM server momentum", low=0, high=1, high_open=True
    ),
    RunOption("--mu", "proximal_mu", float, "FedProx mu (0: off)", low=0, high=1e6),
    RunOption(
        "--gamma-max",
        "gamma_max",
        float,
        "adaptive masked proximal regulariser (0: off; paper 0.1)",
        low=0,
        high=1e6,
    ),
    RunOption(
        "--mask-skip-layers",
        "mask_skip_layers",
        int,
        "decoder layers unmasked at each end",
        low=0,
        high=10_000,
    ),
    RunOption(
        "--prompt",
        "prompt_variant",
        ("", "original", "improved"),
        "prompt templates ('': as the data says)",
    ),
    RunOption(
        "--eval-every",
        "eval_every",
        int,
        "federated evaluation every N rounds (0: off)",
        low=0,
        high=MANY,
    ),
    RunOption(
        "--max-samples-per-silo",
        "max_samples_per_silo",
        int,
        "cap on a silo's declared samples",
        low=1,
        high=10**9,
    ),
    RunOption(
        "--max-weight-share",
        "max_weight_share",
        float,
        "cap on one update's share of a round",
        low=0,
        high=1,
        low_open=True,
    ),
    RunOption("--aggregator", "aggregator", AGGREGATORS, "how a round's updates are combined"),
    RunOption(
        "--trim-fraction",
        "trim_fraction",
        float,
        "trimmed_mean: fraction cut at each end",
        low=0,
        high=0.5,
        high_open=True,
    ),
    RunOption(
        "--byzantine-silos",
        "byzantine_silos",
        int,
        "krum / multi_krum: silos tolerated (f)",
        low=0,
        high=MANY,
    ),
    RunOption(
        "--multi-krum-keep",
        "multi_krum_keep",
        int,
        "multi_krum: updates averaged (0: K - f)",
        low=0,
        high=MANY,
    ),
    RunOption(
        "--clip-norm", "clip_norm", float, "per-update L2 clipping bound (0: off)", low=0, high=1e9
    ),
    RunOption(
        "--clip-median-factor",
        "clip_median_factor",
        float,
        "clip to this x the median norm (0: off)",
        low=0,
        high=1e6,
    ),
    RunOption(
        "--wire-dtype",
        "wire_dtype",
        WIRE_DTYPES,
        "dtype updates and downloads travel in (the coordinator keeps float32); int8: updates "
        "as blockwise 8-bit codes, downloads in bfloat16",
        aliases=(("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")),
    ),
)

BY_FIELD = {o.field: o for o in OPTIONS}


def field_problems(values: dict[str, Any]) -> list[str]:
    """What is wrong with each value on its own (types and ranges); fields not listed pass."""
    found = []
    for name, value in values.items():
        option = BY_FIELD.get(name)
        if option is None:
            continue
        try:
            option.check(value)
        except ValueError as exc:
            found.append(str(exc))
    return found
