"""CrisisMMD v2.0, humanitarian task, as released: `task_humanitarian_text_img_{train,test}.tsv`.

Columns: event_name, tweet_id, image_id, tweet_text, image, label, label_text, label_image,
label_text_image. The label is `label_image`; URLs are stripped from the tweet text.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from shared.datasets.records import RawSample, image_under
from shared.prompts import CRISISMMD
from shared.records_io import BadRecords

SPLITS = {
    "train": "task_humanitarian_text_img_train.tsv",
    "test": "task_humanitarian_text_img_test.tsv",
}
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


def read(root: Path, split: str, bad: BadRecords) -> Iterator[RawSample]:
    path = root / SPLITS[split]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CrisisMMD split file not found")
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
            label_name = row["label_image"]
            if label_name not in CRISISMMD.options:
                bad.report(where, f"unknown label: {label_name!r}")
                continue
            image = image_under(root, row["image"], where=where, bad=bad)
            if image is None:
                continue
            label = CRISISMMD.options.index(label_name)
            yield RawSample(
                id=f"{row['tweet_id']}_{row['image_id']}",
                image=image,
                image_rel=row["image"],
                text=clean_text(row["tweet_text"]),
                question=None,
                answer=CRISISMMD.target(label),
                label=label,
                group=str(label),
                task="crisismmd",
            )
