"""Adapters that read the five benchmark data sets exactly as released."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.data.datasets import crisismmd, hateful_memes, medalpaca, slake, vqa_rad
from bench.data.datasets.records import RawSample
from shared.records_io import BadRecords

Reader = Callable[[Path, str, BadRecords], Iterator[RawSample]]
SLAKE_LANGUAGES = ("en", "all")
CRISISMMD_LABELS = tuple(crisismmd.SPLIT_DIRS)


@dataclass(frozen=True)
class DatasetInfo:
    """A data set's reader, which modalities it was released with, and its splits."""

    reader: Reader
    modalities: frozenset[str]  # {"image", "text"} for full-modal data sets
    splits: frozenset[str]  # of train and test, those the release has

    @property
    def full_modal(self) -> bool:
        return self.modalities == {"image", "text"}

    @property
    def test_only(self) -> bool:
        return self.splits == {"test"}


@dataclass(frozen=True)
class ReadOptions:
    """Choices among a release's variants."""

    slake_languages: str = "en"  # SLAKE: "en" (q_lang == "en") or "all" (every language)
    crisismmd_labels: str = "all"  # CrisisMMD: "all" (datasplit_all) or "agreed" (agreed_label)


_BOTH = frozenset({"image", "text"})
DATASETS: dict[str, DatasetInfo] = {
    "hateful_memes": DatasetInfo(hateful_memes.read, _BOTH, frozenset({"train", "test"})),
    "crisismmd": DatasetInfo(crisismmd.read, _BOTH, frozenset({"train", "test"})),
    "medalpaca": DatasetInfo(medalpaca.read, frozenset({"text"}), frozenset({"train"})),
    "vqa_rad": DatasetInfo(vqa_rad.read, frozenset({"image"}), frozenset({"train", "test"})),
    "slake": DatasetInfo(slake.read, frozenset({"image"}), frozenset({"test"})),
}


def read_dataset(
    name: str, root: Path, split: str, *, bad: BadRecords, options: ReadOptions | None = None
) -> list[RawSample]:
    """Every sample of one split (none for a split the release lacks); raises DataFormatError
    (or counts it in `bad`) per bad record."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    options = options or ReadOptions()
    if options.slake_languages not in SLAKE_LANGUAGES:
        raise ValueError(f"SLAKE languages {options.slake_languages!r}: use en or all")
    if split not in DATASETS[name].splits:
        return []
    reader = DATASETS[name].reader
    if name == "slake":
        reader = partial(slake.read, all_languages=options.slake_languages == "all")
    if name == "crisismmd":
        reader = partial(crisismmd.read, labels=options.crisismmd_labels)
    return list(reader(root, split, bad))


__all__ = [
    "CRISISMMD_LABELS",
    "DATASETS",
    "SLAKE_LANGUAGES",
    "BadRecords",
    "DatasetInfo",
    "RawSample",
    "ReadOptions",
    "read_dataset",
]
