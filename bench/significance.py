"""Paired significance of the study's claims: per-seed differences, their mean, and an exact
sign-flip permutation p-value (two-sided), by scenario and pooled over a data set's cells.

A method and its comparison ran on the same partition (same scenario, level and seed), so the
difference of a pair removes the partition's own luck; under "no difference" each pair's sign
is a coin flip. With n pairs the smallest possible p-value is 2 / 2**n: 0.25 for 3 seeds, so
no single scenario's 3 seeds can be significant at 0.05; the pooled rows can.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import PRIMARY

EXACT_PAIRS = 24  # up to 2**24 sign patterns enumerated (in blocks); beyond, sampled
SAMPLED_FLIPS = 200_000
_BLOCK = 16  # sign patterns of the last 16 pairs held at once: 65,536 rows
REFERENCES = ("Local", "Zero-shot", "FedAvg")


@dataclass(frozen=True)
class PairedTest:
    """Differences a - b of paired values, their mean, and the permutation p-value."""

    differences: tuple[float, ...]
    mean: float
    p_value: float  # two-sided: share of sign flips with |mean| at least the observed one
    exact: bool  # every sign pattern enumerated (else SAMPLED_FLIPS seeded draws)


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """The sign-flip permutation test of mean(a - b) = 0 over pairs (a[i], b[i])."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired test needs equally many values, at least one: {len(a)}, {len(b)}")
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    observed = abs(differences.sum()) - 1e-12 * max(1.0, float(np.abs(differences).sum()))
    mean = float(differences.mean())
    if len(differences) > EXACT_PAIRS:
        rng = np.random.default_rng(0)
        signs = rng.choice((1.0, -1.0), size=(SAMPLED_FLIPS, len(differences)))
        extreme = int(np.sum(np.abs(signs @ differences) >= observed))
        p_value = (extreme + 1) / (SAMPLED_FLIPS + 1)  # the observed signs count as one draw
        return PairedTest(tuple(differences.tolist()), mean, p_value, exact=False)
    head, tail = differences[:-_BLOCK], differences[-_BLOCK:]
    tail_sums = np.array(list(itertools.product((1.0, -1.0), repeat=len(tail)))) @ tail
    extreme = sum(
        int(np.sum(np.abs(tail_sums + np.dot(pattern, head)) >= observed))
        for pattern in itertools.product((1.0, -1.0), repeat=len(head))
    )
    p_value = extreme / 2 ** len(differences)
    return PairedTest(tuple(differences.tolist()), mean, p_value, exact=True)


def primary_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each source's paper metric found in these rows (VQA-RAD and SLAKE apart)."""
    found = {m for r in rows for m in r["metrics"]}
    return [f"{s}/{m}" for s, m in PRIMARY.items() if f"{s}/{m}" in found]


def comparisons(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(method, against): every method against Local and Zero-shot, every FL method against
    FedAvg, every ablation variant 'X+...' against its plain 'X', and a variant with a value
    'X+reg(0.1)' against 'X+reg'."""
    pairs = [
        (method, reference)
        for reference in REFERENCES
        if reference in methods
        for method in methods
        if method not in (reference, "Zero-shot")
        if method != "Local" or reference == "Zero-shot"
    ]
    pairs += [(m, m.split("+")[0]) for m in methods if "+" in m and m.split("+")[0] in methods]
    pairs += [(m, _unvalued(m)) for m in methods if _unvalued(m) in methods and _unvalued(m) != m]
    return list(dict.fromkeys(pairs))


def _unvalued(method: str) -> str:
    """'FedAvg+reg(0.1)' -> 'FedAvg+reg': a variant with a value against the default one."""
    return method[: method.rindex("(")] if method.endswith(")") and "(" in method else method


def _pairs(
    rows: Sequence[dict[str, Any]], method: str, against: str, metric: str
) -> tuple[list[float], list[float]]:
    value = {
        (r["scenario"], r["seed"], r["method"]): r["metrics"][metric]
        for r in rows
        if metric in r["metrics"]
    }
    keys = sorted({(s, seed) for s, seed, m in value if m == method})
    keys = [k for k in keys if (*k, against) in value]
    return [value[(*k, method)] for k in keys], [value[(*k, against)] for k in keys]


def _line(claim: str, cells: str, test: PairedTest) -> str:
    shown = ", ".join(f"{100 * d:+.1f}" for d in test.differences)
    p_value = f"{test.p_value:.2g}" + ("" if test.exact else " (sampled)")
    n = len(test.differences)
    return f"| {claim} | {cells} | {shown} | {100 * test.mean:+.2f} | {p_value} | {n} |"


def significance_table(results: Sequence[dict[str, Any]]) -> str:
    """Per data set and paper metric: each comparison per scenario (pairs = seeds) and pooled
    over the data set's scenarios and levels (pairs = scenario x seed)."""
    lines: list[str] = []
    for dataset in sorted({r["dataset"] for r in results}):
        rows = [r for r in results if r["dataset"] == dataset]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
        for metric in primary_metrics(rows):
            lines += [
                f"### {dataset}: {metric}, paired differences (x100) and sign-flip p-values",
                "",
                "| claim | cells | per-pair differences | mean | p | pairs |",
                "|---|---|---|---:|---:|---:|",
            ]
            for method, against in comparisons(methods):
                claim = f"{method} > {against}"
                for scenario in scenarios:
                    mine = [r for r in rows if r["scenario"] == scenario]
                    a, b = _pairs(mine, method, against, metric)
                    if a:
                        lines.append(_line(claim, scenario, paired_test(a, b)))
                if len(scenarios) > 1:
                    a, b = _pairs(rows, method, against, metric)
                    if a:
                        lines.append(_line(claim, "all cells pooled", paired_test(a, b)))
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.significance",
        description="Paired significance tables of one or more grids' results.jsonl.",
    )
    parser.add_argument("results", type=Path, nargs="+", help="a grid's results.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    args = parser.parse_args(argv)
    tables = []
    for path in args.results:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        tables.append(f"## {path}\n\n{significance_table(rows)}")
    args.out.write_text("\n".join(tables))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
