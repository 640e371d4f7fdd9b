"""`silo-agent check --data DIR --model DIR`: prove locally, contacting no one, that this silo
can train.

Reports every malformed record (not just the first), unreadable images, the modality mix, and
sequences longer than the model accepts; loads the model as a round would (same flags) and runs
one forward and backward pass (no optimizer step) on a real batch of every modality mix present,
reporting seconds per step, peak memory, the LoRA parameter count and the longest sequence.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from transformers import PretrainedConfig, PreTrainedModel

from shared.cli import config_error
from shared.errors import DataFormatError
from shared.records_io import BadRecords, json_lines
from shared.silo_data import SPLITS, Sample, parse_record
from silo_agent.batching import modality_kind
from silo_agent.failures import TrainingFailed
from silo_agent.model import SiloModel, model_from_arguments
from silo_agent.trial import peak_memory, trial_batches, trial_step


@dataclass
class SplitReport:
    name: str
    samples: list[Sample] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    longest: int = 0  # tokens of the longest sample, prompt and answer
    too_long: int = 0


def _readable(sample: Sample, report: SplitReport) -> bool:
    if sample.image is None:
        return True
    try:
        with Image.open(sample.image) as image:
            image.verify()
    except Exception as exc:  # PIL raises many kinds for a broken file
        report.problems.append(f"{sample.image}: unreadable image ({exc})")
        return False
    return True


def check_split(directory: Path, split: str, silo: SiloModel, limit: int) -> SplitReport:
    report = SplitReport(name=split)
    bad = BadRecords(skip=True)
    for where, record in json_lines(directory / f"{split}.jsonl", bad):
        try:
            sample = parse_record(record, directory=directory, where=where)
        except DataFormatError as exc:
            report.problems.append(str(exc))
            continue
        if _readable(sample, report):
            report.samples.append(sample)
            report.kinds[modality_kind(sample)] += 1
    report.problems += bad.examples
    refusal = silo.refusal(report.samples)
    if refusal is not None:
        report.problems.append(f"{split}: {refusal}")
        return report
    for sample in report.samples:
        try:
            length = int(silo.batch([sample])["input_ids"].shape[1])
        except TrainingFailed as exc:
            report.problems.append(f"{split} sample {sample.id}: {exc.detail}")
            continue
        report.longest = max(report.longest, length)
        report.too_long += length > limit
    return report


def context_limit(config: PretrainedConfig) -> int:
    text_config = getattr(config, "text_config", None) or config
    return int(getattr(text_config, "max_position_embeddings", 0) or 10**9)


def trial_problems(silo: SiloModel, samples: list[Sample], batch_size: int) -> list[str]:
    """One forward and backward pass per modality mix; what failed, one line each."""
    problems = []
    for batch in trial_batches(samples, batch_size):
        try:
            step = trial_step(silo, batch)
        except TrainingFailed as exc:
            problems.append(f"training step: {exc}")
            continue
        print(
            f"training step, {step.mix} batch of {step.rows} x {step.tokens} tokens: "
            f"{step.seconds:.2f} s (forward and backward)"
        )
    return problems


def report_splits(data: Path, silo: SiloModel, limit: int) -> tuple[list[str], list[Sample]]:
    """Each split's summary printed; its problems, and the samples to try training on (the
    training split's, else the test split's)."""
    problems: list[str] = []
    trainable: list[Sample] = []
    for split in [s for s in SPLITS if (data / f"{s}.jsonl").is_file()]:
        report = check_split(data, split, silo, limit)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.kinds.items()))
        lengths = (
            f"; longest sequence {report.longest} tokens, {report.too_long} over the limit"
            if report.longest
            else ""
        )
        print(f"{split}: {len(report.samples)} usable samples ({kinds}){lengths}")
        for problem in report.problems:
            print(f"  problem: {problem}")
        problems += report.problems + [f"{split}: a sample over the context"] * report.too_long
        trainable = trainable or report.samples
    return problems, trainable


def main(args: argparse.Namespace) -> int:
    """0 when the silo can train, 1 with the problems listed; a CliError when it cannot even
    be checked (no data, a model that does not load)."""
    try:
        silo = model_from_arguments(args)
    except Exception as exc:  # whatever stops the model from loading is what the check reports
        raise config_error(f"model {args.model}: {exc}") from None
    base = silo.model.get_base_model()
    assert isinstance(base, PreTrainedModel)
    limit = context_limit(base.config)
    lora_parameters = sum(p.numel() for p in silo.model.parameters() if p.requires_grad)
    print(
        f"model {args.model}: {silo.family}, adapter of {len(silo.adapter_layout)} LoRA tensors "
        f"({lora_parameters:,} parameters), context {limit} tokens"
    )
    problems, trainable = report_splits(args.data, silo, limit)
    if silo.refusal(trainable) is None:
        for problem in trial_problems(silo, trainable, args.batch_size):
            print(f"  problem: {problem}")
            problems.append(problem)
    print(f"peak memory {peak_memory(silo.device)}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0
