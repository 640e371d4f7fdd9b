"""Fixtures of the silo agent's tests: a silo whose samples have every modality mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.data.synthetic_data import write_silo
from shared.prompts import HATEFUL_MEMES, PromptVariant, build_prompt


@pytest.fixture(scope="session")
def mixed_silo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight training samples: every third without its image, every third without its text."""
    directory = write_silo(tmp_path_factory.mktemp("mixed") / "silo", train=8, test=2, seed=5)
    path = directory / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for index, record in enumerate(records):
        if index % 3 == 1:
            record["image"] = None
        elif index % 3 == 2:
            record["text"] = None
        record["conversations"][0]["content"] = build_prompt(
            HATEFUL_MEMES,
            text=record["text"],
            has_image=record["image"] is not None,
            variant=PromptVariant.ORIGINAL,
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory
