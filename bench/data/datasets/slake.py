"""SLAKE as released: `Slake1.0/test.json` and `Slake1.0/imgs/` (`--root` is the folder that
holds Slake1.0/, or Slake1.0/ itself). A zero-shot test set: English questions
(`q_lang == "en"`) or, with `all_languages`, every question (the paper's 2,094).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bench.data.datasets.records import RawSample, med_vqa_sample
from shared.records_io import BadRecords, has_columns, json_array

COLUMNS = ("qid", "img_name", "question", "answer", "q_lang", "answer_type")


def _base(root: Path) -> Path:
    return root / "Slake1.0" if (root / "Slake1.0").is_dir() else root


def read(
    root: Path, split: str, bad: BadRecords, *, all_languages: bool = False
) -> Iterator[RawSample]:
    base = _base(root)
    path = base / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SLAKE {split} file not found")
    for where, row in json_array(path, bad):
        if not has_columns(row, COLUMNS, where=where, bad=bad):
            continue
        if row["q_lang"] != "en" and not all_languages:
            continue
        sample = med_vqa_sample(
            row,
            sample_id=f"slake-{row['qid']}",
            source="slake",
            root=base,
            relative=f"imgs/{row['img_name']}",
            group=None,
            where=where,
            bad=bad,
        )
        if sample is not None:
            yield sample
