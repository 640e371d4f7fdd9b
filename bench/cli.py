"""`fedmllm-bench`'s command line, parsed before the grid's model code loads (a fast --help)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli import Parser

DESCRIPTION = """\
Run the grid of data set x scenario x method x seed of a bench.yaml, resume it, report it.
Each finished cell is one line of OUT/results.jsonl, so an interrupted grid resumes where it
stopped; OUT/results.md holds the tables and OUT/plots/ the per-round figures."""


def parser() -> argparse.ArgumentParser:
    parsed = Parser(prog="fedmllm-bench", description=DESCRIPTION)
    parsed.add_argument("--config", type=Path, required=True, help="bench.yaml")
    parsed.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code shipped in the model directory (e.g. MiniCPM-V 2.6): the "
        "silos load it and the coordinator starts from an adapter made with it",
    )
    return parsed


def main(argv: list[str] | None = None) -> None:
    parser().parse_args(argv)  # usage errors and --help before the grid's imports
    from bench.runner import main as run

    run(argv)
