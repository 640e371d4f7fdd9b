"""Synthetic twins of the medical data sets (MedAlpaca, VQA-RAD, SLAKE) in their release trees.

The image's colour tells the organ, so a model can learn to answer the twins' questions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench.data.synthetic_data import noisy_image

# (organ, its image colour, VQA-RAD image_organ, SLAKE location, its Chinese name)
_ORGANS = (
    ("brain", (220, 220, 220), "HEAD", "Brain", "脑"),
    ("lung", (60, 60, 60), "CHEST", "Lung", "肺"),
    ("liver", (160, 80, 40), "ABD", "Abdomen", "肝脏"),
)


def write_medalpaca(root: Path, *, train: int, test: int = 0, seed: int) -> Path:
    """`medical_meadow_wikidoc_medical_flashcards.json`: a JSON array of flashcards."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    cards = []
    for i in range(train):
        organ = _ORGANS[rng.randrange(len(_ORGANS))][0]
        cards.append(
            {
                "input": f"Which organ does condition {i} mainly affect?",
                "output": f"Condition {i} mainly affects the {organ}.",
                "instruction": "Answer this question truthfully",
            }
        )
    path = root / "medical_meadow_wikidoc_medical_flashcards.json"
    path.write_text(json.dumps(cards, indent=4), encoding="utf-8")
    return root


def write_vqa_rad(root: Path, *, train: int, test: int, seed: int) -> Path:
    """`VQA_RAD Dataset Public.json` and `VQA_RAD Image Folder/synpic<N>.jpg`; the test split
    is the `test_*` phrase types."""
    rng = random.Random(seed)
    images = root / "VQA_RAD Image Folder"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(train + test):
        index = rng.randrange(len(_ORGANS))
        organ, colour, image_organ, _, _ = _ORGANS[index]
        name = f"synpic{50_000 + i}.jpg"
        noisy_image(rng, colour).save(images / name)
        closed, shown = rng.random() < 0.5, rng.random() < 0.5
        asked = organ if shown else _ORGANS[(index + 1) % len(_ORGANS)][0]
        phrase = rng.choice(["freeform", "para"])
        rows.append(
            {
                "qid": i,
                "image_name": name,
                "image_organ": image_organ,
                "answer": ("Yes" if shown else "No") if closed else organ,
                "answer_type": "CLOSED" if closed else "OPEN",
                "question_type": "PRES" if closed else "ORGAN",
                "question": f"Is the {asked} shown?" if closed else "Which organ is shown?",
                "phrase_type": f"test_{phrase}" if i >= train else phrase,
            }
        )
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows, indent=1))
    return root


def write_slake(root: Path, *, train: int = 0, test: int, seed: int) -> Path:
    """`Slake1.0/test.json` and `Slake1.0/imgs/xmlab<N>/source.jpg`; every fourth question is
    in Chinese (`q_lang` zh), as in the bilingual release."""
    rng = random.Random(seed)
    base = root / "Slake1.0"
    rows = []
    for i in range(test):
        index = rng.randrange(len(_ORGANS))
        organ, colour, _, location, _ = _ORGANS[index]
        image_name = f"xmlab{i}/source.jpg"
        (base / "imgs" / image_name).parent.mkdir(parents=True, exist_ok=True)
        noisy_image(rng, colour).save(base / "imgs" / image_name)
        english, closed, shown = i % 4 != 3, rng.random() < 0.4, rng.random() < 0.5
        asked = _ORGANS[index if shown else (index + 1) % len(_ORGANS)]
        if english:
            question = f"Does the picture contain {asked[0]}?"
            question = question if closed else "Which organ is shown?"
            answer = ("Yes" if shown else "No") if closed else organ.capitalize()
        else:
            question = f"图中包含{asked[4]}吗?" if closed else "图中显示的是哪个器官?"
            answer = ("是" if shown else "否") if closed else _ORGANS[index][4]
        rows.append(
            {
                "img_id": i,
                "img_name": image_name,
                "question": question,
                "answer": answer,
                "q_lang": "en" if english else "zh",
                "location": location,
                "modality": "CT",
                "answer_type": "CLOSED" if closed else "OPEN",
                "base_type": "vqa",
                "content_type": "Organ",
                "triple": ["vhead", "_", "_"],
                "qid": 11_000 + i,
            }
        )
    base.mkdir(parents=True, exist_ok=True)
    (base / "test.json").write_text(json.dumps(rows, ensure_ascii=False, indent=4))
    return root
