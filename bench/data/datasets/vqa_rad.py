"""VQA-RAD as released: a JSON array of {"qid","image_name","answer","answer_type",
"question","phrase_type",...} and an image folder. The test split is the `test_*` phrase types.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bench.data.datasets.records import RawSample, med_vqa_sample
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
        sample = med_vqa_sample(
            row,
            sample_id=f"vqarad-{row['qid']}",
            source="vqa_rad",
            root=root,
            relative=f"{images}/{row['image_name']}",
            group=str(row["question_type"]) if row.get("question_type") else None,
            where=where,
            bad=bad,
        )
        if sample is not None:
            yield sample
