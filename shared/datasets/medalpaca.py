"""MedAlpaca medical flashcards as released: one JSON array of {"instruction","input","output"}.

Text only and train only; the question (`input`) is the sample's text modality.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from shared.datasets.records import BadRecords, RawSample

FILE = "medical_meadow_medical_flashcards.json"


def _file(root: Path) -> Path:
    if root.is_file():
        return root
    path = root / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MedAlpaca flashcards file not found")
    return path


def read(root: Path, split: str, bad: BadRecords) -> Iterator[RawSample]:
    if split != "train":
        return
    path = _file(root)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of flashcards")
    for index, row in enumerate(rows):
        where = f"{path}: record {index}"
        if not isinstance(row, dict):
            bad.report(where, "malformed record: not an object")
            continue
        missing = [k for k in ("instruction", "input", "output") if k not in row]
        if missing:
            bad.report(where, f"missing column: {', '.join(missing)}")
            continue
        if not str(row["input"]).strip() or not str(row["output"]).strip():
            bad.report(where, "empty question or answer")
            continue
        yield RawSample(
            id=f"medalpaca-{index}",
            image=None,
            image_rel=None,
            text=str(row["input"]),
            question=str(row["instruction"]),
            answer=str(row["output"]),
            label=None,
            group="qa",
        )
