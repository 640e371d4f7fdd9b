"""Each adapter on a tiny copy of its release (tests/bench/data/releases.py), the twins against the
same layout, and each kind of bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench.data.datasets import BadRecords, RawSample, ReadOptions, read_dataset
from bench.data.twins import TWINS
from shared.errors import DataFormatError
from shared.prompts import CRISISMMD, CRISISMMD_AGREED
from tests.bench.data.releases import MEDALPACA_CARDS, RELEASES


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    return {name: write(root / name) for name, write in RELEASES.items()}


def _read(name: str, root: Path, split: str, **options: str) -> list[RawSample]:
    return read_dataset(name, root, split, bad=BadRecords(), options=ReadOptions(**options))


def test_hateful_memes(releases: dict[str, Path]) -> None:
    train = _read("hateful_memes", releases["hateful_memes"], "train")
    test = _read("hateful_memes", releases["hateful_memes"], "test")
    assert [s.id for s in train] == ["42951", "42958"] and [s.id for s in test] == [
        "16395",
        "37405",
    ]
    sample = train[1]
    assert sample.text == "look at them crawling over the border like vermin"
    assert (
        sample.label == 1 and sample.answer == "(B) hateful" and sample.image_rel == "img/42958.png"
    )
    assert sample.image == releases["hateful_memes"] / "img" / "42958.png"
    assert sample.source == "hateful_memes" and sample.task == "hateful_memes"


def test_crisismmd_from_the_top_folder(releases: dict[str, Path]) -> None:
    top = releases["crisismmd"]
    train = _read("crisismmd", top, "train")
    assert [s.id for s in train] == [
        "905955478101196800_0",
        "910545113937600512_0",
        "917791291823591425_0",
    ]
    # the label is label_image, also where the text's label disagrees
    assert [CRISISMMD.options[s.label or 0] for s in train] == [
        "rescue_volunteering_or_donation_effort",
        "infrastructure_and_utility_damage",
        "vehicle_damage",
    ]
    assert (
        train[2].image
        == top / "data_image/california_wildfires/10_10_2017/917791291823591425_0.png"
    )
    assert (
        train[1].text == "RT @newsdesk: Rescuers dig through the rubble of a school in Mexico City"
    )
    test = _read("crisismmd", top, "test")
    assert test[1].text == '"Death toll rises to 180" as rains ease in Sri Lanka'
    assert {s.source for s in train + test} == {"crisismmd"} and test[1].task == "crisismmd"


def test_crisismmd_from_the_split_folder_when_the_images_lie_beside_it(
    releases: dict[str, Path],
) -> None:
    top = releases["crisismmd"]
    split_folder = _read("crisismmd", top / "crisismmd_datasplit_all", "train")
    assert split_folder == _read("crisismmd", top, "train")


def test_crisismmd_refuses_a_root_it_cannot_place(
    releases: dict[str, Path], tmp_path: Path
) -> None:
    lone = tmp_path / "crisismmd_datasplit_all"
    shutil.copytree(releases["crisismmd"] / "crisismmd_datasplit_all", lone)
    with pytest.raises(FileNotFoundError, match=re.escape("pass the top folder CrisisMMD_v2.0/")):
        _read("crisismmd", lone, "train")  # no data_image/ beside it
    with pytest.raises(FileNotFoundError, match=re.escape("pass the top folder CrisisMMD_v2.0/")):
        _read("crisismmd", releases["crisismmd"].parent, "train")


def test_crisismmd_agreed_label_split_has_the_merged_classes(releases: dict[str, Path]) -> None:
    train = _read("crisismmd", releases["crisismmd"], "train", crisismmd_labels="agreed")
    assert [s.id for s in train] == ["905955478101196800_0", "917791291823591425_0"]
    assert [s.answer for s in train] == [
        "(C) rescue_volunteering_or_donation_effort",
        "(B) infrastructure_and_utility_damage",
    ]
    test = _read("crisismmd", releases["crisismmd"], "test", crisismmd_labels="agreed")
    assert [s.answer for s in test] == ["(A) affected_individuals"] * 2
    assert {s.task for s in train + test} == {"crisismmd_agreed"}
    assert len(CRISISMMD_AGREED.options) == 5


def test_medalpaca_from_its_directory_or_the_file(
    releases: dict[str, Path], tmp_path: Path
) -> None:
    folder = releases["medalpaca"]
    from_folder = _read("medalpaca", folder, "train")
    from_file = _read(
        "medalpaca", folder / "medical_meadow_wikidoc_medical_flashcards.json", "train"
    )
    assert from_folder == from_file and len(from_folder) == len(MEDALPACA_CARDS)
    assert [s.text for s in from_folder] == [c["input"] for c in MEDALPACA_CARDS]
    assert [s.answer for s in from_folder] == [c["output"] for c in MEDALPACA_CARDS]
    assert all(s.image is None and s.source == "medalpaca" for s in from_folder)
    assert _read("medalpaca", folder, "test") == []
    renamed = tmp_path / "cards"
    renamed.mkdir()
    (renamed / "medical_meadow_medical_flashcards.json").write_text(json.dumps(MEDALPACA_CARDS))
    with pytest.raises(
        FileNotFoundError, match=re.escape("medical_meadow_wikidoc_medical_flashcards.json")
    ):
        _read("medalpaca", renamed, "train")


def test_vqa_rad_test_split_is_the_test_phrase_types(releases: dict[str, Path]) -> None:
    train = _read("vqa_rad", releases["vqa_rad"], "train")
    test = _read("vqa_rad", releases["vqa_rad"], "test")
    assert [s.id for s in train] == ["vqarad-0", "vqarad-1"]
    assert [s.id for s in test] == ["vqarad-2", "vqarad-3"]
    assert [s.answer_type for s in test] == ["OPEN", "CLOSED"]
    assert test[0].image_rel == "VQA_RAD Image Folder/synpic29265.jpg"
    assert all(s.has_image and not s.has_text and s.source == "vqa_rad" for s in train + test)


@pytest.mark.parametrize("inside", [False, True])
def test_slake_is_test_only_english_or_every_language(
    releases: dict[str, Path], inside: bool
) -> None:
    root = releases["slake"] / "Slake1.0" if inside else releases["slake"]
    english = _read("slake", root, "test")
    every = _read("slake", root, "test", slake_languages="all")
    assert [s.id for s in english] == ["slake-11934", "slake-11935"]
    assert [s.id for s in every] == ["slake-11934", "slake-11935", "slake-11936"]
    assert [s.answer_type for s in english] == ["OPEN", "CLOSED"]
    assert english[0].image_rel == "imgs/xmlab102/source.jpg" and english[0].source == "slake"
    assert _read("slake", root, "train") == []  # the release's train.json is not the benchmark's


def _shape(relative: str) -> str:
    """A path with its numbers and CrisisMMD event names generalised."""
    return re.sub(r"data_image/[a-z_]+/", "data_image/EVENT/", re.sub(r"\d+", "N", relative))


def _layout(root: Path) -> dict[str, str | set[str]]:
    """Each data file with its header (TSV) or record keys (JSON), and each image path shape."""
    layout: dict[str, str | set[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = str(path.relative_to(root))
        if path.suffix == ".tsv":
            layout[relative] = path.read_text(encoding="utf-8").splitlines()[0]
        elif path.suffix == ".jsonl":
            layout[relative] = set(json.loads(path.read_text().splitlines()[0]))
        elif path.suffix == ".json":
            layout[relative] = set(json.loads(path.read_text(encoding="utf-8"))[0])
        else:
            layout[_shape(relative)] = "image"
    return layout


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twins_are_laid_out_like_the_releases(
    releases: dict[str, Path], tmp_path: Path, name: str
) -> None:
    twin = _layout(TWINS[name](tmp_path / name, train=8, test=8, seed=3))
    release = _layout(releases[name])
    assert twin, f"{name}: the twin wrote nothing"
    for key, value in twin.items():
        assert key in release, f"{name}: the twin writes {key}, which the release does not have"
        if isinstance(value, set):
            assert value <= set(release[key]), f"{name}: {key} has fields the release lacks"
        else:
            assert value == release[key], f"{name}: {key} differs from the release"


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


def test_crisismmd_missing_column_and_unknown_label(
    releases: dict[str, Path], tmp_path: Path
) -> None:
    top = tmp_path / "CrisisMMD_v2.0"
    shutil.copytree(releases["crisismmd"], top)
    path = top / "crisismmd_datasplit_all" / "task_humanitarian_text_img_train.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].replace("\tPositive", ""), *lines[2:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv:2: malformed row"):
        _read("crisismmd", top, "train")
    fields = lines[2].split("\t")
    fields[7] = "flood"
    path.write_text("\n".join([lines[0], lines[1], "\t".join(fields)]) + "\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv:3: unknown label: 'flood'"):
        _read("crisismmd", top, "train")
    path.write_text("\n".join(line.rsplit("\t", 1)[0] for line in lines) + "\n")
    with pytest.raises(DataFormatError, match="missing column: label_text_image"):
        _read("crisismmd", top, "train")
