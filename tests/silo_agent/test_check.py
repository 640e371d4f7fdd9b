"""`silo-agent check`: every problem of a silo's data and model found locally."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from silo_agent.__main__ import main


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


Check = Callable[[Path, Path], Outcome]


@pytest.fixture
def check_silo(capsys: pytest.CaptureFixture[str]) -> Check:
    def run(data: Path, model: Path) -> Outcome:
        with pytest.raises(SystemExit) as ended:
            main(["check", "--data", str(data), "--model", str(model)])
        captured = capsys.readouterr()
        return Outcome(int(ended.value.code or 0), captured.out, captured.err)

    return run


def test_clean_silo_passes(silo_data: dict[str, Path], tiny_model: Path, check_silo: Check) -> None:
    result = check_silo(silo_data["silo-1"], tiny_model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train: 12 usable samples (image+text 12)" in result.stdout
    assert "test: 4 usable samples" in result.stdout and result.stdout.strip().endswith("ok")


def test_every_problem_is_listed(
    silo_data: dict[str, Path],
    tiny_model: Path,
    tmp_path: Path,
    check_silo: Check,
) -> None:
    data = shutil.copytree(silo_data["silo-1"], tmp_path / "silo")
    records = (data / "train.jsonl").read_text().splitlines()
    broken = json.loads(records[1])
    (data / broken["image"]).write_bytes(b"not a png")
    missing = json.loads(records[2])
    missing["image"] = "images/none.png"
    records[2] = json.dumps(missing)
    records.append("{oops")
    (data / "train.jsonl").write_text("\n".join(records) + "\n")
    result = check_silo(data, tiny_model)
    assert result.returncode == 1
    assert "unreadable image" in result.stdout
    assert "train.jsonl:3: image file not found" in result.stdout
    assert "train.jsonl:13: malformed JSON" in result.stdout
    assert "train: 10 usable samples" in result.stdout
    assert result.stdout.strip().endswith("3 problem(s)")
