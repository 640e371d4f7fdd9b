"""The wire dtype's effect, from a finished grid of bench/wire_dtype.yaml: bytes a round and the
primary metric per cell, each bfloat16 cell paired with its float32 twin (same scenario, method
and seed), with the sign-flip p-value of the mean difference.

    python -m bench.wire_effect [--results .study/wire/results.jsonl] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.docs import replace_section
from bench.significance import paired_test

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
METRIC = "hateful_memes/auc"
WIRES = ("fp32", "bf16")


def _bytes_a_round(row: dict[str, Any]) -> float:
    rounds = row["rounds"]
    return float(sum(r["bytes_sent"] + r["bytes_received"] for r in rounds)) / len(rounds)


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(float32 row, bfloat16 row) of every cell that ran with both wires."""
    by_key = {(r["scenario"], r["method"], r["seed"]): r for r in rows}
    pairs = []
    for (scenario, method, seed), row in sorted(by_key.items()):
        name, _, wire = method.rpartition(" ")
        twin = by_key.get((scenario, f"{name} bf16", seed))
        if wire == "fp32" and twin is not None:
            pairs.append((row, twin))
    return pairs


def table(rows: list[dict[str, Any]]) -> str:
    """Per cell pair, then pooled: AUC x100 for each wire, the difference and bytes a round."""
    pairs = _pairs(rows)
    if not pairs:
        raise ValueError("no cell ran with both float32 and bfloat16 on the wire")
    lines = [
        "| scenario | method | seed | AUC fp32 | AUC bf16 | bf16 - fp32 | bytes a round fp32 "
        "| bytes a round bf16 | bf16 / fp32 bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wide, narrow in pairs:
        a, b = 100 * wide["metrics"][METRIC], 100 * narrow["metrics"][METRIC]
        wide_bytes, narrow_bytes = _bytes_a_round(wide), _bytes_a_round(narrow)
        lines.append(
            f"| {wide['scenario']} | {wide['method'].rpartition(' ')[0]} | {wide['seed']} "
            f"| {a:.1f} | {b:.1f} | {b - a:+.1f} | {wide_bytes:,.0f} | {narrow_bytes:,.0f} "
            f"| **{narrow_bytes / wide_bytes:.3f}** |"
        )
    test = paired_test(
        [100 * n["metrics"][METRIC] for _, n in pairs],
        [100 * w["metrics"][METRIC] for w, _ in pairs],
    )
    lines += [
        "",
        f"Pooled over the {len(pairs)} pairs: bf16 - fp32 = {test.mean:+.2f} AUC points "
        f"(sign-flip p = {test.p_value:.3f}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path(".study/wire/results.jsonl"))
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    body = table(rows)
    print(body)
    if args.write_docs:
        replace_section(DOCS, "wire-dtype", body)


if __name__ == "__main__":
    main()
