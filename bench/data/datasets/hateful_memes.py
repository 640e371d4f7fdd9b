"""Hateful-Memes as released: `img/*.png`, `train.jsonl`, `test_seen.jsonl`.

Each line: {"id": 42953, "img": "img/42953.png", "label": 0, "text": "..."}.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bench.data.datasets.records import RawSample, image_under
from shared.prompts import HATEFUL_MEMES
from shared.records_io import BadRecords, has_columns, json_lines

SPLITS = {"train": "train.jsonl", "test": "test_seen.jsonl"}


def read(root: Path, split: str, bad: BadRecords) -> Iterator[RawSample]:
    path = root / SPLITS[split]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Hateful-Memes split file not found")
    for where, row in json_lines(path, bad):
        if not has_columns(row, ("id", "img", "label", "text"), where=where, bad=bad):
            continue
        if row["label"] not in (0, 1):
            bad.report(where, f"unknown label: {row['label']!r} (expected 0 or 1)")
            continue
        image = image_under(root, str(row["img"]), where=where, bad=bad)
        if image is None:
            continue
        label = int(row["label"])
        yield RawSample(
            id=str(row["id"]),
            image=image,
            image_rel=str(row["img"]),
            text=str(row["text"]),
            question=None,
            answer=HATEFUL_MEMES.target(label),
            label=label,
            group=str(label),
            source="hateful_memes",
            task="hateful_memes",
        )
