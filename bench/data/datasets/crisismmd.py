"""CrisisMMD v2.0, humanitarian task, read from the release's top folder `CrisisMMD_v2.0/`.

The split files are `crisismmd_datasplit_all/task_humanitarian_text_img_{train,dev,test}.tsv`
(the paper's split) or, with labels "agreed", `crisismmd_datasplit_agreed_label/
task_humanitarian_text_img_agreed_lab_{train,dev,test}.tsv` (only pairs whose text and image
labels agree, in five merged classes). Columns: event_name, tweet_id, image_id, tweet_text,
image, label, label_text, label_image, label_text_image; `image` is relative to the top folder
(`data_image/<event>/<date>/<id>.jpg`). The label is `label_image`; URLs are stripped from the
tweet text.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from bench.data.datasets.records import RawSample, image_under
from shared.prompts import TASKS
from shared.records_io import BadRecords

SPLIT_DIRS = {"all": "crisismmd_datasplit_all", "agreed": "crisismmd_datasplit_agreed_label"}
FILE_STEMS = {
    "all": "task_humanitarian_text_img",
    "agreed": "task_humanitarian_text_img_agreed_lab",
}
TASK_OF = {"all": "crisismmd", "agreed": "crisismmd_agreed"}
IMAGE_DIR = "data_image"
COLUMNS = (
    "event_name",
    "tweet_id",
    "image_id",
    "tweet_text",
    "image",
    "label",
    "label_text",
    "label_image",
    "label_text_image",
)
_URL = re.compile(r"https?://\S+|www\.\S+")


def clean_text(text: str) -> str:
    return " ".join(_URL.sub("", text).split())


def split_file(labels: str, split: str) -> str:
    """The release's file name of one split, e.g. task_humanitarian_text_img_train.tsv."""
    return f"{FILE_STEMS[labels]}_{split}.tsv"


def locate(root: Path, labels: str) -> tuple[Path, Path]:
    """(folder of the split TSVs, top folder the `image` column is relative to). `root` is the
    top folder, or the split folder itself when data_image/ lies beside it."""
    if labels not in SPLIT_DIRS:
        raise ValueError(f"unknown CrisisMMD labels {labels!r}; choose one of {list(SPLIT_DIRS)}")
    train_file = split_file(labels, "train")
    fix = f"pass the top folder CrisisMMD_v2.0/ (it holds {IMAGE_DIR}/ and {SPLIT_DIRS[labels]}/)"
    if (root / SPLIT_DIRS[labels] / train_file).is_file():
        top, splits = root, root / SPLIT_DIRS[labels]
    elif (root / train_file).is_file():
        top, splits = root.parent, root
        if not (top / IMAGE_DIR).is_dir():
            raise FileNotFoundError(
                f"{root}: holds the split files but {top / IMAGE_DIR} does not exist; {fix}"
            )
    else:
        raise FileNotFoundError(f"{root}: no {SPLIT_DIRS[labels]}/{train_file}; {fix}")
    if not (top / IMAGE_DIR).is_dir():
        raise FileNotFoundError(f"{top / IMAGE_DIR}: CrisisMMD image folder not found; {fix}")
    return splits, top


def read(root: Path, split: str, bad: BadRecords, *, labels: str = "all") -> Iterator[RawSample]:
    splits, top = locate(root, labels)
    path = splits / split_file(labels, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CrisisMMD split file not found")
    task = TASKS[TASK_OF[labels]]
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        absent = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            bad.report(f"{path}:1", f"missing column: {', '.join(absent)}")
            return
        for number, row in enumerate(reader, start=2):
            where = f"{path}:{number}"
            if None in row.values() or None in row:
                bad.report(where, "malformed row: wrong number of fields")
                continue
            if row["label_image"] not in task.options:
                bad.report(where, f"unknown label: {row['label_image']!r}")
                continue
            image = image_under(top, row["image"], where=where, bad=bad)
            if image is None:
                continue
            label = task.options.index(row["label_image"])
            yield RawSample(
                id=row["image_id"],
                image=image,
                image_rel=row["image"],
                text=clean_text(row["tweet_text"]),
                question=None,
                answer=task.target(label),
                label=label,
                group=str(label),
                source="crisismmd",
                task=TASK_OF[labels],
            )
