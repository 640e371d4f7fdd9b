"""Synthetic twins of the five benchmark data sets, written in each one's release format.

Small, seeded, and multimodal in the way that matters: in the classification twins each
modality alone decides only part of the label, so missing modalities measurably hurt.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

from shared.datasets.crisismmd import COLUMNS, SPLITS
from shared.demo.synthetic_data import meme, noisy_image
from shared.prompts import CRISISMMD

# CrisisMMD twin: the image's colour gives two bits of the class, the tweet's keyword the third.
_COLOURS = ((200, 40, 40), (40, 60, 200), (40, 170, 60), (200, 200, 40))
_KEYWORDS = (("calm", "quiet", "routine"), ("urgent", "emergency", "critical"))
_ORGANS = (("brain", (220, 220, 220)), ("lung", (60, 60, 60)), ("liver", (160, 80, 40)))


def write_hateful_memes(root: Path, *, train: int, test: int, seed: int) -> Path:
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


def write_crisismmd(root: Path, *, train: int, test: int, seed: int) -> Path:
    rng = random.Random(seed)
    for split, count in (("train", train), ("test", test)):
        rows = []
        for i in range(count):
            colour, urgent = rng.randrange(4), rng.randrange(2)
            label = CRISISMMD.options[2 * colour + urgent]
            image_rel = f"data_image/{split}/{i}.jpg"
            (root / image_rel).parent.mkdir(parents=True, exist_ok=True)
            noisy_image(rng, _COLOURS[colour]).save(root / image_rel)
            text = (
                f"{rng.choice(_KEYWORDS[urgent])} situation downtown "
                f"https://t.co/{rng.randrange(10**6)}"
            )
            rows.append(
                {
                    "event_name": "synthetic_flood",
                    "tweet_id": str(10**9 + i),
                    "image_id": f"{10**9 + i}_0",
                    "tweet_text": text,
                    "image": image_rel,
                    "label": label,
                    "label_text": label,
                    "label_image": label,
                    "label_text_image": "Positive",
                }
            )
        with (root / SPLITS[split]).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(
                handle,
                fieldnames=COLUMNS,
                delimiter="\t",
                quoting=csv.QUOTE_NONE,
                lineterminator="\n",
            )
            writer.writeheader()
            writer.writerows(rows)
    return root


def write_medalpaca(root: Path, *, train: int, test: int = 0, seed: int) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    cards = []
    for i in range(train):
        organ, _ = _ORGANS[rng.randrange(len(_ORGANS))]
        cards.append(
            {
                "instruction": "Answer this question truthfully",
                "input": f"Which organ does condition {i} mainly affect?",
                "output": organ,
            }
        )
    (root / "medical_meadow_medical_flashcards.json").write_text(json.dumps(cards, indent=1))
    return root


def write_vqa_rad(root: Path, *, train: int, test: int, seed: int) -> Path:
    rng = random.Random(seed)
    images = root / "VQA_RAD Image Folder"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(train + test):
        organ, colour = _ORGANS[rng.randrange(len(_ORGANS))]
        name = f"synpic{i}.jpg"
        noisy_image(rng, colour).save(images / name)
        closed = rng.random() < 0.5
        phrase = "test_freeform" if i >= train else rng.choice(["freeform", "para"])
        rows.append(
            {
                "qid": i,
                "image_name": name,
                "image_organ": organ.upper(),
                "question": f"Is this the {organ}?" if closed else "Which organ is shown?",
                "answer": "yes" if closed else organ,
                "answer_type": "CLOSED" if closed else "OPEN",
                "question_type": "ORGAN",
                "phrase_type": phrase,
            }
        )
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows, indent=1))
    return root


def write_slake(root: Path, *, train: int = 0, test: int, seed: int) -> Path:
    rng = random.Random(seed)
    base = root / "Slake1.0"
    rows = []
    for i in range(test):
        organ, colour = _ORGANS[rng.randrange(len(_ORGANS))]
        image_rel = f"xmlab{i}/source.jpg"
        (base / "imgs" / image_rel).parent.mkdir(parents=True, exist_ok=True)
        noisy_image(rng, colour).save(base / "imgs" / image_rel)
        english = i % 4 != 3
        rows.append(
            {
                "qid": i,
                "img_name": image_rel,
                "question": "Which organ is shown?" if english else "这是什么器官?",
                "answer": organ,
                "q_lang": "en" if english else "zh",
                "answer_type": "OPEN",
                "content_type": "Organ",
            }
        )
    base.mkdir(parents=True, exist_ok=True)
    (base / "test.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return root


TWINS: dict[str, Callable[..., Path]] = {
    "hateful_memes": write_hateful_memes,
    "crisismmd": write_crisismmd,
    "medalpaca": write_medalpaca,
    "vqa_rad": write_vqa_rad,
    "slake": write_slake,
}
