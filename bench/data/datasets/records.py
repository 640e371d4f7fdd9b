"""What every data set adapter yields, and how bad records stop a read or are skipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.records_io import BadRecords


@dataclass(frozen=True)
class RawSample:
    """One sample as released: its modalities, its target and what the split groups it by."""

    id: str
    image: Path | None  # absolute path of the image, or None
    image_rel: str | None  # the image's path inside the data set's root
    text: str | None  # the text modality (meme text, tweet, question for text QA), or None
    question: str | None  # a VQA question (part of the instruction, not a modality)
    answer: str  # the target answer text
    label: int | None  # option index for multiple-choice tasks
    group: str  # what the Dirichlet split groups by: class label or question / data type
    source: str  # the data set it comes from (a key of bench.data.datasets.DATASETS)
    task: str | None = None  # multiple-choice task of shared.prompts.TASKS
    answer_type: str | None = None  # OPEN / CLOSED for Med-VQA

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def has_text(self) -> bool:
        return self.text is not None


def image_under(root: Path, relative: str, *, where: str, bad: BadRecords) -> Path | None:
    """The image at `root/relative`, or a reported bad record (returns None) if absent."""
    path = root / relative
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        bad.report(where, f"image path outside the data set: {relative}")
        return None
    if not path.is_file():
        bad.report(where, f"image file not found: {path}")
        return None
    return path


def med_vqa_sample(
    row: dict[str, Any],
    *,
    sample_id: str,
    source: str,
    root: Path,
    relative: str,
    group: str | None,
    where: str,
    bad: BadRecords,
) -> RawSample | None:
    """A Med-VQA question on one image (VQA-RAD, SLAKE), OPEN or CLOSED, grouped by `group`
    or else its answer type; a reported bad record (None) if the type or image is wrong."""
    answer_type = str(row["answer_type"]).upper()
    if answer_type not in ("OPEN", "CLOSED"):
        bad.report(where, f"unknown label: answer_type {row['answer_type']!r}")
        return None
    image = image_under(root, relative, where=where, bad=bad)
    if image is None:
        return None
    return RawSample(
        id=sample_id,
        image=image,
        image_rel=relative,
        text=None,
        question=str(row["question"]),
        answer=str(row["answer"]),
        label=None,
        group=group or answer_type,
        source=source,
        answer_type=answer_type,
    )
