"""`fedmllm-partition`: one silo data directory per client, a test directory and a summary.

Output (written in a temporary directory beside --out and renamed into place only when the
whole partition succeeded):
  OUT/client-NN/train.jsonl + the images it uses     (docs/silo-data.md)
  OUT/test/test.jsonl + images                         (the data sets' test splits)
  OUT/partition.json                                   (per-client counts, missing rates)
  OUT/plots/*.png                                      (with --plot)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.datasets import DATASETS, BadRecords, RawSample, read_dataset
from shared.errors import DataFormatError
from shared.prompts import IMAGE_MARKER, TASKS, PromptVariant, build_prompt
from shared.scenarios import SCENARIOS, Placed, ScenarioError, ScenarioSpec, partition
from shared.silo_data import record, write_split

VQA_INSTRUCTION = "Answer the question using a single word or phrase."


def sample_record(placed: Placed, variant: PromptVariant) -> dict[str, Any]:
    """A silo-format record for one sample, its prompt built from the modalities it kept."""
    sample = placed.sample
    text = sample.text if placed.text else None
    image = sample.image_rel if placed.image else None
    if sample.task is not None and sample.label is not None:
        prompt = build_prompt(
            TASKS[sample.task], text=text, has_image=placed.image, variant=variant
        )
        return record(
            sample.id, image, prompt, sample.answer, task=sample.task, text=text, label=sample.label
        )
    parts = [IMAGE_MARKER] if placed.image else []
    parts += [p for p in (sample.question, text) if p]
    if sample.answer_type is not None:
        parts.append(VQA_INSTRUCTION)
    extra = {"answer_type": sample.answer_type} if sample.answer_type else {}
    return record(sample.id, image, "\n".join(parts), sample.answer, text=text, **extra)


def _link(source: Path, target: Path) -> None:
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def write_directory(
    directory: Path, split: str, placed: Iterable[Placed], variant: PromptVariant
) -> None:
    items = list(placed)
    for item in items:
        if item.image and item.sample.image is not None and item.sample.image_rel is not None:
            _link(item.sample.image, directory / item.sample.image_rel)
    write_split(directory, split, (sample_record(p, variant) for p in items))


def _label_name(sample: RawSample) -> str:
    if sample.task is not None and sample.label is not None:
        return TASKS[sample.task].options[sample.label]
    return sample.group


def client_summary(placed: Sequence[Placed]) -> dict[str, Any]:
    kinds = Counter(
        "image+text" if p.image and p.text else "image" if p.image else "text" for p in placed
    )
    slots = 2 * len(placed)
    missing = sum((not p.image) + (not p.text) for p in placed)
    return {
        "samples": len(placed),
        "labels": dict(sorted(Counter(_label_name(p.sample) for p in placed).items())),
        "image+text": kinds["image+text"],
        "image_only": kinds["image"],
        "text_only": kinds["text"],
        "missing_rate": round(missing / slots, 6) if slots else 0.0,
    }


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
    parser.add_argument("--scenario", required=True, choices=SCENARIOS)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--beta", type=float, default=0.3, help="missing: missing-slot rate")
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
    parser.add_argument("--all-languages", action="store_true", help="SLAKE: not only English")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad records (reported with counts by reason) instead of stopping",
    )
    parser.add_argument("--plot", action="store_true", help="write PNG figures to OUT/plots")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def build(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Write the whole partition into `out` and return its summary."""
    if len(args.dataset) != len(args.root):
        raise ScenarioError("give one --root for each --dataset")
    bad = BadRecords(skip=args.skip_bad)
    train, test = [], []
    for name, root in zip(args.dataset, args.root, strict=True):
        read = {"bad": bad, "all_languages": args.all_languages}
        samples = read_dataset(name, root, "train", **read)
        if samples:
            train.append(samples)
        test.extend(read_dataset(name, root, "test", **read))
    full_modal = len(args.dataset) == 1 and DATASETS[args.dataset[0]].full_modal
    if not full_modal and args.scenario in ("cross", "hybrid") and len(train) != 2:
        raise ScenarioError(
            f"the {args.scenario} scenario over single-modal data needs one "
            "image-modal and one text-modal data set (e.g. vqa_rad, medalpaca)"
        )
    spec = ScenarioSpec(
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
    clients = partition(train, full_modal=full_modal, spec=spec)
    variant = PromptVariant(args.prompt)
    for index, placed in enumerate(clients):
        write_directory(out / f"client-{index:02d}", "train", placed, variant)
    if test:
        write_directory(
            out / "test", "test", (Placed(s, s.has_image, s.has_text) for s in test), variant
        )
    summary = {
        "datasets": args.dataset,
        "spec": asdict(spec),
        "prompt": args.prompt,
        "clients": {f"client-{i:02d}": client_summary(p) for i, p in enumerate(clients)},
        "test_samples": len(test),
        "skipped": {"total": bad.total, "by_reason": dict(sorted(bad.reasons.items()))},
    }
    (out / "partition.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if args.plot:
        from shared.partition_plots import write_plots  # matplotlib only when asked for

        write_plots(summary, out / "plots")
    return summary


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
    skipped = summary["skipped"]
    for name, info in summary["clients"].items():
        print(
            f"{name}: {info['samples']:>6} samples  image+text {info['image+text']:>6}  "
            f"image-only {info['image_only']:>6}  text-only {info['text_only']:>6}  "
            f"missing {info['missing_rate']:.3f}"
        )
    print(
        f"test: {summary['test_samples']} samples; skipped {skipped['total']} bad record(s)"
        + (f" {skipped['by_reason']}" if skipped["total"] else "")
        + f"; written to {out}"
    )


if __name__ == "__main__":
    main()
