"""Synthetic twins of the five benchmark data sets, each written in its release's file tree.

Small, seeded, and multimodal in the way that matters: in the classification twins each
modality alone decides only part of the label, so missing modalities measurably hurt. File and
folder names, headers and fields are the releases' own, spelled out here rather than taken from
the adapters, so that an adapter that assumes another layout fails on its twin.
"""

from __future__ import annotations

import csv
import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data.datasets import crisismmd
from bench.data.medical_twins import write_medalpaca, write_slake, write_vqa_rad
from bench.data.synthetic_data import meme, noisy_image
from shared.prompts import CRISISMMD

# The eight humanitarian classes, in the prompt's order; the twin's image colour gives two
# bits, the tweet the third.
CRISISMMD_CLASSES = CRISISMMD.options
# How the agreed-label split merges classes.
CRISISMMD_MERGED = {
    "injured_or_dead_people": "affected_individuals",
    "missing_or_found_people": "affected_individuals",
    "vehicle_damage": "infrastructure_and_utility_damage",
}
_EVENTS = (
    ("hurricane_harvey", "Hurricane Harvey", 9),
    ("hurricane_irma", "Hurricane Irma", 9),
    ("hurricane_maria", "Hurricane Maria", 10),
    ("mexico_earthquake", "the Mexico earthquake", 9),
    ("california_wildfires", "the California wildfires", 10),
    ("srilanka_floods", "the Sri Lanka floods", 6),
    ("iraq_iran_earthquake", "the Iraq-Iran earthquake", 11),
)
_COLOURS = ((200, 40, 40), (40, 60, 200), (40, 170, 60), (200, 200, 40))
_KEYWORDS = (("calm", "quiet", "routine"), ("urgent", "emergency", "critical"))
_FILLERS = ("crews on site", "photos from this morning", "stay safe everyone", "more soon")


def write_hateful_memes(root: Path, *, train: int, test: int, seed: int) -> Path:
    """`img/<id>.png`, `train.jsonl`, `test_seen.jsonl`."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    next_id = 10_000
    for name, count in (("train.jsonl", train), ("test_seen.jsonl", test)):
        with (root / name).open("w", encoding="utf-8") as handle:
            for _ in range(count):
                image, caption, label = meme(rng)
                image.save(root / "img" / f"{next_id}.png")
                row = {"id": next_id, "img": f"img/{next_id}.png", "label": label, "text": caption}
                handle.write(json.dumps(row) + "\n")
                next_id += 1
    return root


def _tweet(rng: random.Random, number: int, split_index: int) -> tuple[dict[str, Any], int]:
    """A tweet's fields (without labels) and its class: the colour of its image gives two bits
    of the class, the urgency of its wording the third."""
    event, phrase, month = _EVENTS[rng.randrange(len(_EVENTS))]
    colour, urgent = rng.randrange(4), rng.randrange(2)
    tweet_id = str(904_000_000_000_000_000 + split_index * 10**12 + number * 1_000)
    link = "".join(rng.choices(string.ascii_letters + string.digits, k=10))
    extension = "png" if rng.random() < 0.1 else "jpg"
    row = {
        "event_name": event,
        "tweet_id": tweet_id,
        "image_id": f"{tweet_id}_0",
        "tweet_text": f"{rng.choice(_KEYWORDS[urgent]).capitalize()} update on {phrase}: "
        f"{rng.choice(_FILLERS)} https://t.co/{link}",
        "image": f"data_image/{event}/{rng.randint(1, 28)}_{month}_2017/{tweet_id}_0.{extension}",
    }
    return row, 2 * colour + urgent


def _crisismmd_split(
    root: Path, split: str, count: int, rng: random.Random
) -> list[dict[str, Any]]:
    rows = []
    for number in range(count):
        row, label_index = _tweet(rng, number, ("train", "dev", "test").index(split))
        label = CRISISMMD_CLASSES[label_index]
        text_label = label if rng.random() < 0.85 else rng.choice(CRISISMMD_CLASSES)
        agree = "Positive" if text_label == label else "Negative"
        row |= {"label": label, "label_text": text_label, "label_image": label}
        row["label_text_image"] = agree
        (root / row["image"]).parent.mkdir(parents=True, exist_ok=True)
        noisy_image(rng, _COLOURS[label_index // 2]).save(root / row["image"])
        rows.append(row)
    return rows


def _agreed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = []
    for row in rows:
        text = CRISISMMD_MERGED.get(row["label_text"], row["label_text"])
        image = CRISISMMD_MERGED.get(row["label_image"], row["label_image"])
        if text == image:
            merged.append(
                row | {"label_text": text, "label_image": image, "label_text_image": "Positive"}
            )
    return merged


def _write_tsv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(
            handle,
            fieldnames=crisismmd.COLUMNS,
            delimiter="\t",
            quoting=csv.QUOTE_NONE,
            lineterminator="\n",
        )
        writer.writeheader()
        writer.writerows(rows)


def write_crisismmd(root: Path, *, train: int, test: int, seed: int) -> Path:
    """The top folder CrisisMMD_v2.0/: `data_image/<event>/<d_m_yyyy>/<tweet id>_0.jpg`,
    `crisismmd_datasplit_all/task_humanitarian_text_img_{train,dev,test}.tsv` and the
    agreed-label split beside it."""
    rng = random.Random(seed)
    for split, count in (("train", train), ("dev", test // 4), ("test", test)):
        rows = _crisismmd_split(root, split, count, rng)
        _write_tsv(
            root / "crisismmd_datasplit_all" / f"task_humanitarian_text_img_{split}.tsv", rows
        )
        _write_tsv(
            root
            / "crisismmd_datasplit_agreed_label"
            / f"task_humanitarian_text_img_agreed_lab_{split}.tsv",
            _agreed(rows),
        )
    return root


TWINS: dict[str, Callable[..., Path]] = {
    "hateful_memes": write_hateful_memes,
    "crisismmd": write_crisismmd,
    "medalpaca": write_medalpaca,
    "vqa_rad": write_vqa_rad,
    "slake": write_slake,
}
