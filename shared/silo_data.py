"""The silo data directory format (docs/silo-data.md): reading, validating, writing.

A directory holds `train.jsonl` (and optionally `test.jsonl`); each line is one record
`{"id", "image": path relative to the directory or null, "conversations": [user, assistant]}`.
In the user turn, `<image>` marks where the image goes. Optional task fields
`{"task", "text", "label"}` let a run rebuild the prompt with another template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shared.errors import DataFormatError
from shared.prompts import IMAGE_MARKER, TASKS, PromptVariant, build_prompt
from shared.records_io import BadRecords, json_lines

SPLITS = ("train", "test")
_SOURCE = re.compile(r"[A-Za-z0-9_.-]+")  # it names metrics, '<source>/<metric>'


@dataclass(frozen=True)
class Sample:
    """One training or test example: the prompt, the target, and the image if the sample has one."""

    id: str
    image: Path | None
    prompt: str
    answer: str
    has_text: bool = True  # whether the sample's text modality is present
    task: str | None = None  # a task of shared.prompts.TASKS, when the record names one
    text: str | None = None  # the text modality itself, for rebuilding the prompt
    label: int | None = None  # the option index, for rebuilding the answer
    answer_type: str | None = None  # OPEN or CLOSED for Med-VQA questions
    source: str | None = None  # the data set it comes from; Med-VQA is scored per source

    @property
    def has_image(self) -> bool:
        return self.image is not None

    def rendered(self, variant: PromptVariant | None) -> Sample:
        """This sample with its prompt rebuilt from its task fields in `variant`, if it has them."""
        if variant is None or self.task is None or self.label is None:
            return self
        task = TASKS[self.task]
        prompt = build_prompt(task, text=self.text, has_image=self.has_image, variant=variant)
        return replace(self, prompt=prompt, answer=task.target(self.label))


def parse_record(record: Any, *, directory: Path, where: str) -> Sample:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("id", "image", "conversations"):
        if key not in record:
            raise DataFormatError(f"{where}: missing key {key!r}")
    turns = record["conversations"]
    if (
        not isinstance(turns, list)
        or len(turns) != 2
        or not all(isinstance(t, dict) for t in turns)
        or [t.get("role") for t in turns] != ["user", "assistant"]
        or not all(isinstance(t.get("content"), str) for t in turns)
    ):
        raise DataFormatError(
            f"{where}: 'conversations' must be [{{'role': 'user', 'content': str}}, "
            "{'role': 'assistant', 'content': str}]"
        )
    image = record["image"]
    image_path: Path | None = None
    if image is not None:
        if not isinstance(image, str) or Path(image).is_absolute() or ".." in Path(image).parts:
            raise DataFormatError(f"{where}: 'image' must be a path inside the directory or null")
        image_path = directory / image
        if not image_path.is_file():
            raise DataFormatError(f"{where}: image file not found: {image_path}")
    prompt, answer = turns[0]["content"], turns[1]["content"]
    if not answer.strip():
        raise DataFormatError(f"{where}: the assistant's answer is empty")
    if image_path is None and not prompt.replace(IMAGE_MARKER, "").strip():
        raise DataFormatError(f"{where}: sample has neither an image nor any prompt text")
    sample = Sample(id=str(record["id"]), image=image_path, prompt=prompt, answer=answer)
    return _with_task_fields(sample, record, where=where)


def _with_task_fields(sample: Sample, record: dict[str, Any], *, where: str) -> Sample:
    answer_type = record.get("answer_type")
    if answer_type is not None and answer_type not in ("OPEN", "CLOSED"):
        raise DataFormatError(f"{where}: 'answer_type' must be OPEN or CLOSED")
    source = record.get("source")
    if source is not None and not (isinstance(source, str) and _SOURCE.fullmatch(source)):
        raise DataFormatError(f"{where}: 'source' must be a data set name such as vqa_rad")
    sample = replace(sample, answer_type=answer_type, source=source)
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        raise DataFormatError(f"{where}: 'text' must be a string or null")
    has_text = text is not None if "text" in record else True
    task, label = record.get("task"), record.get("label")
    if task is None:
        return replace(sample, has_text=has_text, text=text)
    if task not in TASKS:
        raise DataFormatError(f"{where}: unknown task {task!r}; known: {', '.join(TASKS)}")
    if "text" not in record:
        raise DataFormatError(f"{where}: a record with 'task' needs 'text' (a string, or null)")
    options = len(TASKS[task].options)
    if not isinstance(label, int) or not 0 <= label < options:
        raise DataFormatError(f"{where}: 'label' must be an option index 0..{options - 1}")
    if not has_text and sample.image is None:
        raise DataFormatError(f"{where}: sample has neither an image nor text")
    return replace(sample, has_text=has_text, task=task, text=text, label=label)


def read_split(directory: Path, split: str = "train") -> list[Sample]:
    """All samples of one split; the first malformed line stops with its file and line number."""
    path = directory / f"{split}.jsonl"
    if not path.is_file():
        raise DataFormatError(f"{path}: not found (a silo data directory needs {split}.jsonl)")
    samples = [
        parse_record(record, directory=directory, where=where)
        for where, record in json_lines(path, BadRecords())
    ]
    if not samples:
        raise DataFormatError(f"{path}: no samples")
    return samples


def has_split(directory: Path, split: str) -> bool:
    return (directory / f"{split}.jsonl").is_file()


def record(
    sample_id: str, image: str | None, prompt: str, answer: str, **task_fields: Any
) -> dict[str, Any]:
    """One line of a split; `task_fields` are the optional task, text, label, answer_type and
    source."""
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ],
        **task_fields,
    }


def write_split(directory: Path, split: str, records: Iterable[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{split}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for item in records:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path
