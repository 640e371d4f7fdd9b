"""`fedmllm-partition` end to end: output layout, determinism, bad input, plots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from shared.demo.twins import TWINS
from shared.partition import main
from shared.silo_data import read_split


@pytest.fixture(scope="module")
def memes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return TWINS["hateful_memes"](tmp_path_factory.mktemp("hm"), train=60, test=10, seed=2)


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_partition_writes_silo_directories_and_summary(memes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main(
        [
            "--dataset",
            "hateful_memes",
            "--root",
            str(memes),
            "--scenario",
            "missing",
            "--beta",
            "0.4",
            "--clients",
            "3",
            "--prompt",
            "improved",
            "--plot",
            "--out",
            str(out),
        ]
    )
    summary = json.loads((out / "partition.json").read_text())
    assert summary["spec"]["beta"] == 0.4 and len(summary["clients"]) == 3
    total = 0
    for name, info in summary["clients"].items():
        samples = read_split(out / name)
        total += len(samples)
        assert info["samples"] == len(samples)
        assert info["image+text"] + info["image_only"] + info["text_only"] == len(samples)
        assert sum(info["labels"].values()) == len(samples)
        missing = sum((not s.has_image) + (not s.has_text) for s in samples)
        assert info["missing_rate"] == pytest.approx(missing / (2 * len(samples)), abs=1e-6)
        for sample in samples:
            assert ", without considering the modality" in sample.prompt
            assert sample.has_image == ("<image>" in sample.prompt)
    assert total == 60
    assert len(read_split(out / "test", "test")) == 10
    assert (out / "plots" / "modalities.png").stat().st_size > 0
    assert (out / "plots" / "labels.png").stat().st_size > 0


def test_same_seed_gives_byte_identical_output(memes: Path, tmp_path: Path) -> None:
    args = [
        "--dataset",
        "hateful_memes",
        "--root",
        str(memes),
        "--scenario",
        "hybrid",
        "--keep-prob",
        "0.6",
        "--clients",
        "4",
        "--seed",
        "9",
    ]
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_bad_input_leaves_nothing_and_skip_bad_reports(memes: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    TWINS["hateful_memes"](broken, train=20, test=2, seed=3)
    with (broken / "train.jsonl").open("a") as handle:
        handle.write('{"id": 5, "img": "img/missing.png", "label": 1, "text": "x"}\n')
        handle.write('{"id": 6, "img": "img/10000.png", "label": 7, "text": "x"}\n')
    out = tmp_path / "out"
    args = [
        "--dataset",
        "hateful_memes",
        "--root",
        str(broken),
        "--scenario",
        "aligned",
        "--clients",
        "2",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert "train.jsonl:21: image file not found" in str(stopped.value.code)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    main([*args, "--skip-bad"])
    summary = json.loads((out / "partition.json").read_text())
    assert summary["skipped"] == {
        "total": 2,
        "by_reason": {"image file not found": 1, "unknown label": 1},
    }
    assert sum(c["samples"] for c in summary["clients"].values()) == 20


def test_existing_output_is_not_overwritten_without_consent(memes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [
        "--dataset",
        "hateful_memes",
        "--root",
        str(memes),
        "--scenario",
        "aligned",
        "--clients",
        "2",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit):
        main(args)
    assert (out / "keep.txt").read_text() == "mine"


def test_medical_pair_in_the_cross_scenario(tmp_path: Path) -> None:
    vqa = TWINS["vqa_rad"](tmp_path / "vqa", train=30, test=6, seed=1)
    cards = TWINS["medalpaca"](tmp_path / "cards", train=70, seed=1)
    out = tmp_path / "out"
    main(
        [
            "--dataset",
            "vqa_rad",
            "--root",
            str(vqa),
            "--dataset",
            "medalpaca",
            "--root",
            str(cards),
            "--scenario",
            "cross",
            "--image-text-ratio",
            "3:7",
            "--clients",
            "10",
            "--out",
            str(out),
        ]
    )
    summary = json.loads((out / "partition.json").read_text())["clients"]
    image_only = [c for c in summary.values() if c["image_only"]]
    text_only = [c for c in summary.values() if c["text_only"]]
    assert len(image_only) == 3 and len(text_only) == 7
    assert sorted(c["samples"] for c in image_only) == [10, 10, 10]
    assert all(c["samples"] == 10 for c in text_only)
