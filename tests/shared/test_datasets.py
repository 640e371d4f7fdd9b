"""Each adapter on a tiny fixture in the real release format, and each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.datasets import BadRecords, read_dataset
from shared.demo.twins import TWINS
from shared.errors import DataFormatError
from shared.prompts import CRISISMMD


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    return {name: write(root / name, train=12, test=4, seed=5) for name, write in TWINS.items()}


def test_hateful_memes(releases: dict[str, Path]) -> None:
    train = read_dataset("hateful_memes", releases["hateful_memes"], "train", bad=BadRecords())
    test = read_dataset("hateful_memes", releases["hateful_memes"], "test", bad=BadRecords())
    assert (len(train), len(test)) == (12, 4)
    first = json.loads((releases["hateful_memes"] / "train.jsonl").read_text().splitlines()[0])
    sample = train[0]
    assert sample.id == str(first["id"]) and sample.text == first["text"]
    assert sample.label == first["label"] and sample.image_rel == first["img"]
    assert sample.image is not None and sample.image.is_file() and sample.task == "hateful_memes"
    assert sample.answer in ("(A) not-hateful", "(B) hateful")


def test_crisismmd_uses_label_image_and_strips_urls(releases: dict[str, Path]) -> None:
    train = read_dataset("crisismmd", releases["crisismmd"], "train", bad=BadRecords())
    assert len(train) == 12
    for sample in train:
        assert sample.text is not None and "http" not in sample.text and "t.co" not in sample.text
        assert sample.label is not None
        assert sample.answer == CRISISMMD.target(sample.label)


def test_medalpaca_is_text_only_and_train_only(releases: dict[str, Path]) -> None:
    train = read_dataset("medalpaca", releases["medalpaca"], "train", bad=BadRecords())
    assert len(train) == 12 and all(s.image is None and s.text for s in train)
    assert read_dataset("medalpaca", releases["medalpaca"], "test", bad=BadRecords()) == []


def test_vqa_rad_test_split_is_the_test_phrase_types(releases: dict[str, Path]) -> None:
    train = read_dataset("vqa_rad", releases["vqa_rad"], "train", bad=BadRecords())
    test = read_dataset("vqa_rad", releases["vqa_rad"], "test", bad=BadRecords())
    assert (len(train), len(test)) == (12, 4)
    assert {s.answer_type for s in train + test} <= {"OPEN", "CLOSED"}
    assert all(s.has_image and not s.has_text and s.question for s in train)


def test_slake_is_english_by_default(releases: dict[str, Path]) -> None:
    english = read_dataset("slake", releases["slake"], "test", bad=BadRecords())
    every = read_dataset("slake", releases["slake"], "test", bad=BadRecords(), all_languages=True)
    assert len(every) == 4 and len(english) == 3  # every fourth question of the twin is zh
    assert read_dataset("slake", releases["slake"], "train", bad=BadRecords()) == []


def _memes_with(tmp_path: Path, line: str) -> Path:
    root = TWINS["hateful_memes"](tmp_path / "hm", train=3, test=1, seed=1)
    with (root / "train.jsonl").open("a") as handle:
        handle.write(line + "\n")
    return root


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": 1, "img": "img/nope.png", "label": 0, "text": "x"}', "image file not found"),
        ('{"id": 1, "img": "img/10000.png", "label": 3, "text": "x"}', "unknown label"),
        ('{"id": 1, "img": "img/10000.png", "text": "x"}', "missing column: label"),
        ("{not json", "malformed JSON"),
    ],
)
def test_bad_record_stops_naming_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    root = _memes_with(tmp_path, line)
    with pytest.raises(DataFormatError) as error:
        read_dataset("hateful_memes", root, "train", bad=BadRecords())
    assert f"{root / 'train.jsonl'}:4: {reason}" in str(error.value)
    bad = BadRecords(skip=True)
    assert len(read_dataset("hateful_memes", root, "train", bad=bad)) == 3
    assert bad.total == 1 and reason.split(":")[0] in bad.reasons


def test_crisismmd_missing_column_and_unknown_label(tmp_path: Path) -> None:
    root = TWINS["crisismmd"](tmp_path / "c", train=2, test=1, seed=1)
    path = root / "task_humanitarian_text_img_train.tsv"
    lines = path.read_text().splitlines()
    path.write_text(
        "\n".join([lines[0], lines[1].replace(lines[1].split("\t")[7], "flood"), lines[2]]) + "\n"
    )
    with pytest.raises(DataFormatError, match=r"train\.tsv:2: unknown label: 'flood'"):
        read_dataset("crisismmd", root, "train", bad=BadRecords())
    path.write_text("\n".join(line.rsplit("\t", 1)[0] for line in lines) + "\n")
    with pytest.raises(DataFormatError, match="missing column: label_text_image"):
        read_dataset("crisismmd", root, "train", bad=BadRecords())
