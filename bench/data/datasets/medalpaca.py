"""MedAlpaca medical flashcards as released: `medical_meadow_wikidoc_medical_flashcards.json`,
one JSON array of {"instruction", "input", "output"}. `--root` is the file or its directory.

Text only and train only; the question (`input`) is the sample's text modality.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bench.data.datasets.records import RawSample
from shared.records_io import BadRecords, has_columns, json_array

FILE = "medical_meadow_wikidoc_medical_flashcards.json"


def _file(root: Path) -> Path:
    if root.is_file():
        return root
    path = root / FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: MedAlpaca flashcards file not found (the release's name); "
            "pass the file itself as --root if it was renamed"
        )
    return path


def read(root: Path, split: str, bad: BadRecords) -> Iterator[RawSample]:
    path = _file(root)
    for index, (where, row) in enumerate(json_array(path, bad)):
        if not has_columns(row, ("instruction", "input", "output"), where=where, bad=bad):
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
            source="medalpaca",
        )
