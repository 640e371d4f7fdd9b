"""VQA-RAD as released: a JSON array of {"qid","image_name","answer","answer_type",
"question","phrase_type",...} and an image folder. The test split is the `test_*` phrase types.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bench.data.datasets.records import RawSample, image_under
from shared.records_io import BadRecords, has_columns, json_array

FILE = "VQA_RAD Dataset Public.json"
IMAGE_DIRS = ("VQA_RAD Image Folder", "images")


def image_dir(root: Path) -> str:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return name
    raise FileNotFoundError(f"{root}: no image folder ({' or '.join(IMAGE_DIRS)})")


def read(root: Path, split: str, bad: BadRecords) -> Iterator[RawSample]:
    path = root / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VQA-RAD file not found")
    images = image_dir(root)
    for where, row in json_array(path, bad):
        if not has_columns(
            row,
            ("qid", "image_name", "answer", "answer_type", "question", "phrase_type"),
            where=where,
            bad=bad,
        ):
            continue
        if str(row["phrase_type"]).startswith("test") != (split == "test"):
            continue
        answer_type = str(row["answer_type"]).upper()
        if answer_type not in ("OPEN", "CLOSED"):
            bad.report(where, f"unknown label: answer_type {row['answer_type']!r}")
            continue
        relative = f"{images}/{row['image_name']}"
        image = image_under(root, relative, where=where, bad=bad)
        if image is None:
            continue
        yield RawSample(
            id=f"vqarad-{row['qid']}",
            image=image,
            image_rel=relative,
            text=None,
            question=str(row["question"]),
            answer=str(row["answer"]),
            label=None,
            group=str(row.get("question_type") or answer_type),
            source="vqa_rad",
            answer_type=answer_type,
        )
