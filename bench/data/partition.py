"""`fedmllm-partition`: one silo data directory per client, a test directory and a summary.

Output (written in a temporary directory beside --out and renamed into place only when the
whole partition succeeded):
  OUT/client-NN/train.jsonl + the images it uses     (docs/silo-data.md)
  OUT/test/test.jsonl + images                         (the data sets' test splits)
  OUT/partition.json                                   (per-client counts and modality shares)
  OUT/plots/*.png                                      (with --plot)
A test-only data set (SLAKE) given alone yields OUT/test/ only: the directory of an
evaluation-only site (silo-agent --eval-only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.data.datasets import (
    CRISISMMD_LABELS,
    DATASETS,
    SLAKE_LANGUAGES,
    BadRecords,
    RawSample,
    ReadOptions,
    read_dataset,
)
from bench.data.partition_files import client_summary, modality_shares, write_directory
from bench.data.scenarios import (
    SCENARIOS,
    Placed,
    ScenarioError,
    ScenarioSpec,
    missing_shares,
    partition,
)
from shared.errors import DataFormatError
from shared.prompts import PromptVariant


def _parse_ratio(text: str) -> tuple[int, int]:
    try:
        image, text_part = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I:T such as 3:7, got {text!r}") from None
    if image < 0 or text_part < 0 or image + text_part == 0:
        raise argparse.ArgumentTypeError(f"I:T needs non-negative parts, not both 0: {text!r}")
    return image, text_part


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmllm-partition",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset",
        action="append",
        required=True,
        choices=sorted(DATASETS),
        help="data set (repeat with --root for an image-modal + text-modal pair)",
    )
    parser.add_argument(
        "--root",
        action="append",
        required=True,
        type=Path,
        help="the data set's directory as released (one per --dataset)",
    )
    parser.add_argument(
        "--scenario", choices=SCENARIOS, help="required unless the data sets are test-only"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument(
        "--beta", type=float, default=0.3, help="missing: drop probability of each modality"
    )
    parser.add_argument(
        "--image-text-ratio",
        type=_parse_ratio,
        default=(5, 5),
        help="cross: image-only : text-only clients, e.g. 3:7",
    )
    parser.add_argument(
        "--keep-prob",
        type=float,
        default=0.8,
        help="hybrid: probability a client keeps each modality",
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument(
        "--min-samples",
        type=int,
        default=1,
        help="fewest samples a Dirichlet split may give a client",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", choices=[v.value for v in PromptVariant], default="original")
    parser.add_argument(
        "--slake-languages",
        choices=SLAKE_LANGUAGES,
        default="en",
        help="SLAKE: English questions only, or all (the paper's 2,094)",
    )
    parser.add_argument(
        "--crisismmd-labels",
        choices=CRISISMMD_LABELS,
        default="all",
        help="CrisisMMD: crisismmd_datasplit_all (the paper's) or the agreed-label split",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad records (reported with counts by reason) instead of stopping",
    )
    parser.add_argument("--plot", action="store_true", help="write PNG figures to OUT/plots")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def _read(
    args: argparse.Namespace, bad: BadRecords
) -> tuple[list[list[RawSample]], list[RawSample]]:
    """The training samples per data set that has any, and every test sample."""
    if len(args.dataset) != len(args.root):
        raise ScenarioError("give one --root for each --dataset")
    options = ReadOptions(
        slake_languages=args.slake_languages, crisismmd_labels=args.crisismmd_labels
    )
    train, test = [], []
    for name, root in zip(args.dataset, args.root, strict=True):
        samples = read_dataset(name, root, "train", bad=bad, options=options)
        if samples:
            train.append(samples)
        test.extend(read_dataset(name, root, "test", bad=bad, options=options))
    if not (train or test):
        raise ScenarioError(f"{', '.join(args.dataset)}: no samples in any split")
    return train, test


def _spec(args: argparse.Namespace) -> ScenarioSpec:
    if args.scenario is None:
        raise ScenarioError(
            f"{', '.join(args.dataset)}: training data needs a --scenario ({', '.join(SCENARIOS)})"
        )
    return ScenarioSpec(
        scenario=args.scenario,
        clients=args.clients,
        alpha=args.alpha,
        beta=args.beta,
        image_clients=args.image_text_ratio[0],
        text_clients=args.image_text_ratio[1],
        keep_prob=args.keep_prob,
        seed=args.seed,
        min_samples=args.min_samples,
    )


def _clients(args: argparse.Namespace, train: list[list[RawSample]]) -> list[list[Placed]]:
    full_modal = len(args.dataset) == 1 and DATASETS[args.dataset[0]].full_modal
    spec = _spec(args)
    if not full_modal and spec.scenario in ("cross", "hybrid") and len(train) != 2:
        raise ScenarioError(
            f"the {spec.scenario} scenario over single-modal data needs one "
            "image-modal and one text-modal data set (e.g. vqa_rad, medalpaca)"
        )
    return partition(train, full_modal=full_modal, spec=spec)


def _shares(args: argparse.Namespace, clients: list[list[Placed]]) -> dict[str, Any]:
    shares: dict[str, Any] = {"measured": modality_shares([p for c in clients for p in c])}
    if args.scenario == "missing":
        shares["expected"] = {k: round(v, 6) for k, v in missing_shares(args.beta).items()}
    return shares


def build(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Write the whole partition into `out` and return its summary. Without training data
    (test-only data sets) only `out/test` is written, for an evaluation-only site."""
    bad = BadRecords(skip=args.skip_bad)
    train, test = _read(args, bad)
    clients = _clients(args, train) if train else []
    variant = PromptVariant(args.prompt)
    for index, placed in enumerate(clients):
        write_directory(out / f"client-{index:02d}", "train", placed, variant)
    if test:
        write_directory(
            out / "test", "test", (Placed(s, s.has_image, s.has_text) for s in test), variant
        )
    summary = {
        "datasets": args.dataset,
        "spec": asdict(_spec(args)) if clients else None,
        "prompt": args.prompt,
        "slake_languages": args.slake_languages,
        "crisismmd_labels": args.crisismmd_labels,
        "clients": {f"client-{i:02d}": client_summary(p) for i, p in enumerate(clients)},
        "shares": _shares(args, clients) if clients else None,
        "test_samples": len(test),
        "test_sources": dict(sorted(Counter(s.source for s in test).items())),
        "skipped": {"total": bad.total, "by_reason": dict(sorted(bad.reasons.items()))},
    }
    (out / "partition.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if args.plot and clients:
        from bench.data.partition_plots import write_plots  # matplotlib only when asked for

        write_plots(summary, out / "plots")
    return summary


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    for name, info in summary["clients"].items():
        print(
            f"{name}: {info['samples']:>6} samples  image+text {info['image+text']:>6}  "
            f"image-only {info['image_only']:>6}  text-only {info['text_only']:>6}  "
            f"missing {info['missing_rate']:.3f}"
        )
    if not summary["clients"]:
        print(f"no training split: {out / 'test'} is for an evaluation-only site (--eval-only)")
    skipped = summary["skipped"]
    sources = ", ".join(f"{k} {v}" for k, v in summary["test_sources"].items())
    print(
        f"test: {summary['test_samples']} samples ({sources or 'none'}); "
        f"skipped {skipped['total']} bad record(s)"
        + (f" {skipped['by_reason']}" if skipped["total"] else "")
        + f"; written to {out}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        parser.error(f"{out} exists and is not empty; pass --overwrite to replace it")
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        summary = build(args, partial)
    except (DataFormatError, ScenarioError, FileNotFoundError, ValueError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        sys.exit(f"fedmllm-partition: {exc}")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    _print_summary(summary, out)


if __name__ == "__main__":
    main()
