"""The wire dtype's effect, from a finished grid of bench/wire_dtype.yaml: bytes a round and the
primary metric per cell, each bfloat16 and int8 cell paired with its float32 twin (same
scenario, method and seed), with the sign-flip p-value of each mean difference.

    python -m bench.wire_effect [--results .study/wire/results.jsonl] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench.docs import replace_section
from bench.significance import paired_test

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
METRIC = "hateful_memes/auc"
NARROW = ("bf16", "int8")  # each against fp32


def _bytes_a_round(row: dict[str, Any]) -> float:
    rounds = row["rounds"]
    return float(sum(r["bytes_sent"] + r["bytes_received"] for r in rounds)) / len(rounds)


def _upload_bytes_a_round(row: dict[str, Any]) -> float:
    rounds = row["rounds"]
    return float(sum(r["bytes_received"] for r in rounds)) / len(rounds)


def _cells(rows: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """wire -> row of every cell (scenario, method, seed) that ran with float32 and every
    narrower wire."""
    by_key = {(r["scenario"], r["method"], r["seed"]): r for r in rows}
    cells = []
    for (scenario, method, seed), row in sorted(by_key.items()):
        name, _, wire = method.rpartition(" ")
        twins = {w: by_key.get((scenario, f"{name} {w}", seed)) for w in NARROW}
        if wire == "fp32" and all(twins.values()):
            cells.append({"fp32": row, **{w: t for w, t in twins.items() if t is not None}})
    return cells


def table(rows: list[dict[str, Any]]) -> str:
    """Per cell, then pooled: AUC x100 for each wire, the differences, and the bytes a round
    (both directions; the upload alone, where int8 codes travel)."""
    cells = _cells(rows)
    if not cells:
        raise ValueError("no cell ran with float32, bfloat16 and int8 on the wire")
    lines = [
        "| scenario | method | seed | AUC fp32 | AUC bf16 | AUC int8 | bf16 - fp32 | int8 - fp32 "
        "| bytes a round fp32 | bf16 / fp32 | int8 / fp32 | upload int8 / fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        auc = {w: 100 * r["metrics"][METRIC] for w, r in cell.items()}
        size = {w: _bytes_a_round(r) for w, r in cell.items()}
        upload = {w: _upload_bytes_a_round(r) for w, r in cell.items()}
        wide = cell["fp32"]
        lines.append(
            f"| {wide['scenario']} | {wide['method'].rpartition(' ')[0]} | {wide['seed']} "
            f"| {auc['fp32']:.1f} | {auc['bf16']:.1f} | {auc['int8']:.1f} "
            f"| {auc['bf16'] - auc['fp32']:+.1f} | {auc['int8'] - auc['fp32']:+.1f} "
            f"| {size['fp32']:,.0f} | **{size['bf16'] / size['fp32']:.3f}** "
            f"| **{size['int8'] / size['fp32']:.3f}** | **{upload['int8'] / upload['fp32']:.3f}** |"
        )
    lines.append("")
    for wire in NARROW:
        test = paired_test(
            [100 * c[wire]["metrics"][METRIC] for c in cells],
            [100 * c["fp32"]["metrics"][METRIC] for c in cells],
        )
        lines.append(
            f"Pooled over the {len(cells)} pairs: {wire} - fp32 = {test.mean:+.2f} AUC points "
            f"(sign-flip p = {test.p_value:.3f})."
        )
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
        origin = (
            f"Tabulated {dt.date.today().isoformat()} from {args.results} (AUC and bytes do not "
            "depend on the machine's load)."
        )
        replace_section(DOCS, "wire-dtype", body, origin=origin)


if __name__ == "__main__":
    main()
