"""What `fedmllm-partition` writes: silo-format records, directories with their images, and
the per-client summaries of partition.json."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.data.datasets import RawSample
from bench.data.scenarios import Placed
from shared.prompts import IMAGE_MARKER, TASKS, PromptVariant, build_prompt
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
        fields = {"task": sample.task, "text": text, "label": sample.label}
        return record(sample.id, image, prompt, sample.answer, source=sample.source, **fields)
    parts = [IMAGE_MARKER] if placed.image else []
    parts += [p for p in (sample.question, text) if p]
    if sample.answer_type is not None:
        parts.append(VQA_INSTRUCTION)
    extra = {"answer_type": sample.answer_type} if sample.answer_type else {}
    prompt = "\n".join(parts)
    return record(sample.id, image, prompt, sample.answer, source=sample.source, text=text, **extra)


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


def _kind(placed: Placed) -> str:
    return "image+text" if placed.image and placed.text else "image" if placed.image else "text"


def modality_shares(placed: Sequence[Placed]) -> dict[str, float]:
    """The measured shares of samples with both modalities, the image only, the text only."""
    kinds = Counter(_kind(p) for p in placed)
    total = len(placed) or 1
    return {
        "image+text": round(kinds["image+text"] / total, 6),
        "image_only": round(kinds["image"] / total, 6),
        "text_only": round(kinds["text"] / total, 6),
    }


def client_summary(placed: Sequence[Placed]) -> dict[str, Any]:
    kinds = Counter(_kind(p) for p in placed)
    slots = 2 * len(placed)
    missing = sum((not p.image) + (not p.text) for p in placed)
    return {
        "samples": len(placed),
        "labels": dict(sorted(Counter(_label_name(p.sample) for p in placed).items())),
        "image+text": kinds["image+text"],
        "image_only": kinds["image"],
        "text_only": kinds["text"],
        "shares": modality_shares(placed),
        "missing_rate": round(missing / slots, 6) if slots else 0.0,
    }
