"""SLAKE as released: `Slake1.0/test.json` and `Slake1.0/imgs/`. A zero-shot test set:
English questions by default (`q_lang == "en"`), every language on request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shared.datasets.records import RawSample, image_under
from shared.records_io import BadRecords, has_columns, json_array


def _base(root: Path) -> Path:
    return root / "Slake1.0" if (root / "Slake1.0").is_dir() else root


def read(
    root: Path, split: str, bad: BadRecords, *, all_languages: bool = False
) -> Iterator[RawSample]:
    if split != "test":
        return
    base = _base(root)
    path = base / "test.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SLAKE test file not found")
    for index, (where, row) in enumerate(json_array(path, bad)):
        if not has_columns(
            row, ("img_name", "question", "answer", "q_lang", "answer_type"), where=where, bad=bad
        ):
            continue
        if row["q_lang"] != "en" and not all_languages:
            continue
        relative = f"imgs/{row['img_name']}"
        image = image_under(base, relative, where=where, bad=bad)
        if image is None:
            continue
        yield RawSample(
            id=f"slake-{row.get('qid', index)}",
            image=image,
            image_rel=relative,
            text=None,
            question=str(row["question"]),
            answer=str(row["answer"]),
            label=None,
            group=str(row["answer_type"]).upper(),
            answer_type=str(row["answer_type"]).upper(),
        )
