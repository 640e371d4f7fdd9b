"""`fedmllm-partition` end to end: output layout, determinism, bad input, plots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bench.data.partition import main
from bench.data.twins import TWINS
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


def _two_aligned_clients(root: Path, out: Path) -> list[str]:
    """The command line that splits the Hateful-Memes release at `root` for two clients."""
    return [
        *("--dataset", "hateful_memes", "--root", str(root), "--scenario", "aligned"),
        *("--clients", "2", "--out", str(out)),
    ]


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
    assert summary["shares"]["expected"] == {
        "image+text": 0.36,
        "image_only": 0.32,
        "text_only": 0.32,
    }
    assert summary["test_sources"] == {"hateful_memes": 10}
    total = 0
    for name, info in summary["clients"].items():
        samples = read_split(out / name)
        total += len(samples)
        assert info["samples"] == len(samples)
        assert info["image+text"] + info["image_only"] + info["text_only"] == len(samples)
        both = sum(s.has_image and s.has_text for s in samples)
        assert info["shares"]["image+text"] == pytest.approx(both / len(samples), abs=1e-6)
        assert sum(info["shares"].values()) == pytest.approx(1.0, abs=1e-5)
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


@pytest.mark.parametrize(
    "scenario", [["--scenario", "hybrid", "--keep-prob", "0.6"], ["--scenario", "missing"]]
)
def test_same_seed_gives_byte_identical_output(
    memes: Path, tmp_path: Path, scenario: list[str]
) -> None:
    args = ["--dataset", "hateful_memes", "--root", str(memes), *scenario]
    args += ["--clients", "4", "--seed", "9"]
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    main([*args[:-1], "10", "--out", str(tmp_path / "c")])
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_bad_input_leaves_nothing_and_skip_bad_reports(memes: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    TWINS["hateful_memes"](broken, train=20, test=2, seed=3)
    with (broken / "train.jsonl").open("a") as handle:
        handle.write('{"id": 5, "img": "img/missing.png", "label": 1, "text": "x"}\n')
        handle.write('{"id": 6, "img": "img/10000.png", "label": 7, "text": "x"}\n')
    out = tmp_path / "out"
    args = _two_aligned_clients(broken, out)
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
    args = _two_aligned_clients(memes, out)
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


@pytest.fixture(scope="module")
def medical(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("medical")
    return {
        "vqa_rad": TWINS["vqa_rad"](root / "vqa", train=30, test=6, seed=1),
        "medalpaca": TWINS["medalpaca"](root / "cards", train=70, seed=1),
        "slake": TWINS["slake"](root / "slake", test=12, seed=1),
    }


def test_slake_alone_is_an_evaluation_only_site(
    medical: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    english, every = tmp_path / "en", tmp_path / "all"
    main(["--dataset", "slake", "--root", str(medical["slake"]), "--out", str(english)])
    assert "evaluation-only site" in capsys.readouterr().out
    argv = ["--dataset", "slake", "--root", str(medical["slake"]), "--slake-languages", "all"]
    main([*argv, "--out", str(every)])
    assert sorted(p.name for p in english.iterdir()) == ["partition.json", "test"]
    summary = json.loads((english / "partition.json").read_text())
    assert summary["clients"] == {} and summary["test_sources"] == {"slake": 9}
    assert summary["slake_languages"] == "en"
    samples = read_split(english / "test", "test")
    assert len(samples) == 9 and {s.source for s in samples} == {"slake"}
    assert len(read_split(every / "test", "test")) == 12  # every fourth question is in Chinese


def test_medical_test_split_keeps_each_questions_source(
    medical: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = [x for name in ("vqa_rad", "medalpaca", "slake") for x in ("--dataset", name)]
    roots = [
        x for name in ("vqa_rad", "medalpaca", "slake") for x in ("--root", str(medical[name]))
    ]
    main([*argv, *roots, "--scenario", "hybrid", "--keep-prob", "0.6", "--out", str(out)])
    summary = json.loads((out / "partition.json").read_text())
    assert summary["test_sources"] == {"slake": 9, "vqa_rad": 6}
    test = read_split(out / "test", "test")
    assert [s.source for s in test] == ["vqa_rad"] * 6 + ["slake"] * 9
    assert all(s.answer_type in ("OPEN", "CLOSED") for s in test)
    trained = [s for c in summary["clients"] for s in read_split(out / c)]
    assert {s.source for s in trained} == {"vqa_rad", "medalpaca"} and len(trained) == 100


def test_training_data_without_a_scenario_is_refused(memes: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--dataset", "hateful_memes", "--root", str(memes), "--out", str(tmp_path / "o")])
    assert "training data needs a --scenario" in str(stopped.value.code)
    assert not (tmp_path / "o").exists()
