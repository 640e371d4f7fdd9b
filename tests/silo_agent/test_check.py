"""`silo-agent check`: every problem of a silo's data and model found locally, and a real
training step per modality mix."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.data.synthetic_data import tokenizer_corpus
from bench.demo.tiny_model import build_tiny_model
from silo_agent import batching
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
        try:
            main(["check", "--data", str(data), "--model", str(model)])
            code = 0
        except SystemExit as ended:
            code = int(ended.code or 0)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

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


def test_a_training_step_per_modality_mix_is_measured(
    mixed_silo: Path, tiny_model: Path, check_silo: Check
) -> None:
    result = check_silo(mixed_silo, tiny_model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train: 8 usable samples (image only 2, image+text 3, text only 3)" in result.stdout
    assert re.search(r"adapter of 16 LoRA tensors \(7,168 parameters\)", result.stdout)
    assert re.search(r"train: .*; longest sequence \d+ tokens, 0 over the limit", result.stdout)
    for mix in ("image only", "image+text", "text only", "mixed"):
        step = re.search(
            rf"training step, {re.escape(mix)} batch of \d x \d+ tokens: (\d+\.\d+) s",
            result.stdout,
        )
        assert step is not None, mix
    assert re.search(r"peak memory \d+ MiB", result.stdout)


def test_a_batch_the_model_cannot_take_fails_the_check(
    mixed_silo: Path,
    tmp_path: Path,
    check_silo: Check,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mllama's 4-D cross-attention mask padded as if it were per token (as the batching once
    did): every batch with an image breaks in the model, and check says so before any round."""
    model = build_tiny_model(tmp_path / "mllama", family="mllama", corpus=tokenizer_corpus())
    per_token = tuple(k for k in batching.SEQUENCE_KEYS if k != "cross_attention_mask")
    monkeypatch.setattr(batching, "SEQUENCE_KEYS", per_token)
    result = check_silo(mixed_silo, model)
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if "problem: training step" in line]
    assert len(failures) == 3  # image only, image+text, mixed; the text-only batch trains
    assert all("batching" in line and "mllama fails on this batch" in line for line in failures)
    assert "training step, text only batch" in result.stdout
    assert result.stdout.strip().endswith("3 problem(s)")


def test_a_mix_the_family_cannot_train_is_refused_by_name(
    mixed_silo: Path, tmp_path: Path, check_silo: Check
) -> None:
    model = build_tiny_model(tmp_path / "paligemma", family="paligemma", corpus=tokenizer_corpus())
    result = check_silo(mixed_silo, model)
    assert result.returncode == 1
    assert (
        "problem: train: paligemma: PaliGemma's processor needs an image in every sample; "
        "the data holds 2 image only, 3 image+text, 3 text only"
    ) in result.stdout
    assert "training step" not in result.stdout
