"""`silo-agent check --data DIR --model DIR`: validate a silo locally, contacting no one.

Reports every malformed record (not just the first), unreadable images, the modality mix,
and prompts longer than the model accepts; loads the model's config and processor and builds
its adapter layout on the meta device (no weights), so that an unsupported model shows here.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from transformers import AutoProcessor, ProcessorMixin

from shared.adapter import load_base_config, lora_layout_state
from shared.errors import DataFormatError
from shared.records_io import BadRecords, json_lines
from shared.silo_data import SPLITS, Sample, parse_record
from silo_agent.batching import prompt_texts, user_images


@dataclass
class SplitReport:
    name: str
    samples: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    longest_prompt: int = 0
    too_long: int = 0


def _kind(sample: Sample) -> str:
    if sample.has_image and sample.has_text:
        return "image+text"
    return "image only" if sample.has_image else "text only"


def check_split(directory: Path, split: str, processor: ProcessorMixin, limit: int) -> SplitReport:
    report = SplitReport(name=split)
    bad = BadRecords(skip=True)
    samples: list[Sample] = []
    for where, record in json_lines(directory / f"{split}.jsonl", bad):
        try:
            samples.append(parse_record(record, directory=directory, where=where))
        except DataFormatError as exc:
            report.problems.append(str(exc))
    report.problems += bad.examples
    for sample in samples:
        if sample.image is not None:
            try:
                with Image.open(sample.image) as image:
                    image.verify()
            except Exception as exc:  # PIL raises many kinds for a broken file
                report.problems.append(f"{sample.image}: unreadable image ({exc})")
                continue
        report.kinds[_kind(sample)] += 1
        report.samples += 1
        encoded = processor(text=prompt_texts(processor, [sample]), images=user_images([sample]))
        length = len(encoded["input_ids"][0])
        report.longest_prompt = max(report.longest_prompt, length)
        report.too_long += length > limit
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="silo-agent check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args(argv)
    problems = 0
    try:
        config = load_base_config(args.model)
        processor = AutoProcessor.from_pretrained(str(args.model), local_files_only=True)
        _, layout = lora_layout_state(config, None)
    except Exception as exc:
        sys.exit(f"silo-agent check: model {args.model}: {exc}")
    text_config = getattr(config, "text_config", config)
    limit = int(getattr(text_config, "max_position_embeddings", 0) or 10**9)
    print(
        f"model {args.model}: {config.model_type}, adapter of {len(layout)} LoRA tensors, "
        f"context {limit} tokens"
    )
    splits = [s for s in SPLITS if (args.data / f"{s}.jsonl").is_file()]
    if not splits:
        sys.exit(f"silo-agent check: {args.data} has neither train.jsonl nor test.jsonl")
    for split in splits:
        report = check_split(args.data, split, processor, limit)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.kinds.items()))
        print(
            f"{split}: {report.samples} usable samples ({kinds}); longest prompt "
            f"{report.longest_prompt} tokens, {report.too_long} over the limit"
        )
        for problem in report.problems:
            print(f"  problem: {problem}")
        problems += len(report.problems) + report.too_long
    print("ok" if not problems else f"{problems} problem(s)")
    sys.exit(1 if problems else 0)
