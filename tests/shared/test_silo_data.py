"""The silo data directory format: valid records load; each bad one names its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import DataFormatError
from shared.prompts import PromptVariant
from shared.silo_data import read_split, record


def _write(directory: Path, lines: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text("\n".join(lines) + "\n")


def test_records_with_and_without_images(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"png")
    _write(
        tmp_path,
        [
            json.dumps(record("1", "img/a.png", "<image>\nWhat?", "(A) x")),
            json.dumps(record("2", None, "Text only?", "(B) y")),
        ],
    )
    samples = read_split(tmp_path)
    assert [s.has_image for s in samples] == [True, False]
    assert samples[0].image == tmp_path / "img" / "a.png"


GOOD = record("1", None, "q", "(A) a")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "malformed JSON"),
        (json.dumps({"id": 1, "image": None}), "missing key 'conversations'"),
        (json.dumps(record("1", "missing.png", "q", "a")), "image file not found"),
        (json.dumps(record("1", "../outside.png", "q", "a")), "inside the directory"),
        (json.dumps({**GOOD, "conversations": GOOD["conversations"][::-1]}), "'conversations'"),
        (json.dumps(record("1", None, "q", " ")), "answer is empty"),
        (json.dumps(record("1", None, "<image>", "a")), "neither an image nor"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    _write(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(DataFormatError, match=message) as error:
        read_split(tmp_path)
    assert f"{tmp_path / 'train.jsonl'}:2" in str(error.value)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"train\.jsonl"):
        read_split(tmp_path)


def test_task_fields_rebuild_the_prompt_from_the_modalities(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    _write(
        tmp_path,
        [
            json.dumps(
                record(
                    "1",
                    "a.png",
                    "as written",
                    "(B) hateful",
                    task="hateful_memes",
                    text=None,
                    label=1,
                )
            ),
            json.dumps(
                record(
                    "2",
                    None,
                    "as written",
                    "(A) not-hateful",
                    task="hateful_memes",
                    text="hello",
                    label=0,
                )
            ),
        ],
    )
    image_only, text_only = read_split(tmp_path)
    assert (image_only.has_image, image_only.has_text) == (True, False)
    assert (text_only.has_image, text_only.has_text) == (False, True)
    assert image_only.rendered(None).prompt == "as written"
    rebuilt = image_only.rendered(PromptVariant.ORIGINAL)
    assert "based on the image" in rebuilt.prompt and rebuilt.answer == "(B) hateful"
    assert "hello" in text_only.rendered(PromptVariant.IMPROVED).prompt


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "hateful_memes", "label": 1}, "needs 'text'"),
        ({"task": "sentiment", "text": "x", "label": 1}, "unknown task"),
        ({"task": "hateful_memes", "text": "x", "label": 2}, "option index 0..1"),
        ({"answer_type": "OPEN", "source": "vqa/rad"}, "'source' must be a data set name"),
        ({"answer_type": "OPEN", "source": 3}, "'source' must be a data set name"),
    ],
)
def test_bad_task_fields(tmp_path: Path, fields: dict[str, object], message: str) -> None:
    _write(tmp_path, [json.dumps(record("1", None, "q", "a", **fields))])
    with pytest.raises(DataFormatError, match=message):
        read_split(tmp_path)


def test_a_question_keeps_its_source(tmp_path: Path) -> None:
    _write(
        tmp_path,
        [
            json.dumps(
                record("1", None, "Which organ?", "lung", answer_type="OPEN", source="slake")
            ),
            json.dumps(record("2", None, "Which organ?", "liver", answer_type="OPEN")),
        ],
    )
    assert [s.source for s in read_split(tmp_path)] == ["slake", None]
