"""Adapters that read the five benchmark data sets exactly as released."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from shared.datasets import crisismmd, hateful_memes, medalpaca, slake, vqa_rad
from shared.datasets.records import RawSample
from shared.records_io import BadRecords

Reader = Callable[[Path, str, BadRecords], Iterator[RawSample]]


@dataclass(frozen=True)
class DatasetInfo:
    """A data set's reader and which modalities it was released with."""

    reader: Reader
    modalities: frozenset[str]  # {"image", "text"} for full-modal data sets

    @property
    def full_modal(self) -> bool:
        return self.modalities == {"image", "text"}


DATASETS: dict[str, DatasetInfo] = {
    "hateful_memes": DatasetInfo(hateful_memes.read, frozenset({"image", "text"})),
    "crisismmd": DatasetInfo(crisismmd.read, frozenset({"image", "text"})),
    "medalpaca": DatasetInfo(medalpaca.read, frozenset({"text"})),
    "vqa_rad": DatasetInfo(vqa_rad.read, frozenset({"image"})),
    "slake": DatasetInfo(slake.read, frozenset({"image"})),
}


def read_dataset(
    name: str, root: Path, split: str, *, bad: BadRecords, all_languages: bool = False
) -> list[RawSample]:
    """Every sample of one split; raises DataFormatError (or counts it in `bad`) per bad record."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    reader = DATASETS[name].reader
    if name == "slake":
        reader = partial(slake.read, all_languages=all_languages)
    return list(reader(root, split, bad))


__all__ = ["DATASETS", "BadRecords", "DatasetInfo", "RawSample", "read_dataset"]
