"""Tiny copies of the five releases, file tree and field names exactly as published, written
out literally (not from the adapters' or the twins' constants) with a few made-up but
release-like rows: an adapter whose layout assumption is wrong fails on these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

CRISISMMD_HEADER = (
    "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tlabel_text\tlabel_image\t"
    "label_text_image"
)
# datasplit_all rows: (split, line). The second train row's text and image labels disagree;
# the third is a .png; the test rows carry a quote and mis-encoded characters, as tweets do.
CRISISMMD_ROWS = (
    (
        "train",
        "hurricane_harvey\t905955478101196800\t905955478101196800_0\tVolunteers loading water "
        "and diapers at the George R. Brown center for #Harvey evacuees https://t.co/Qm3bX9pLwe\t"
        "data_image/hurricane_harvey/8_9_2017/905955478101196800_0.jpg\t"
        "rescue_volunteering_or_donation_effort\trescue_volunteering_or_donation_effort\t"
        "rescue_volunteering_or_donation_effort\tPositive",
    ),
    (
        "train",
        "mexico_earthquake\t910545113937600512\t910545113937600512_0\tRT @newsdesk: Rescuers "
        "dig through the rubble of a school in Mexico City https://t.co/8fKq2LmZ0a "
        "https://t.co/y7DnB1cQ4r\tdata_image/mexico_earthquake/20_9_2017/910545113937600512_0.jpg"
        "\tinfrastructure_and_utility_damage\trescue_volunteering_or_donation_effort\t"
        "infrastructure_and_utility_damage\tNegative",
    ),
    (
        "train",
        "california_wildfires\t917791291823591425\t917791291823591425_0\tBurned-out cars line a "
        "street in Santa Rosa after the #TubbsFire https://t.co/Zr4PqW2nMd\t"
        "data_image/california_wildfires/10_10_2017/917791291823591425_0.png\tvehicle_damage\t"
        "vehicle_damage\tvehicle_damage\tPositive",
    ),
    (
        "dev",
        "hurricane_irma\t909751107018280961\t909751107018280961_0\tMy first mix back since Irma."
        " Check it out! #MagnumRadio https://t.co/KdYwDpj1UJ\t"
        "data_image/hurricane_irma/18_9_2017/909751107018280961_0.jpg\tnot_humanitarian\t"
        "not_humanitarian\tnot_humanitarian\tPositive",
    ),
    (
        "test",
        "hurricane_maria\t912739712399261696\t912739712399261696_0\tFamilies in Utuado still "
        "waiting for help \u201a\u00c4\u00ee no power, no water https://t.co/Hk2sLp9QwE\t"
        "data_image/hurricane_maria/26_9_2017/912739712399261696_0.jpg\taffected_individuals\t"
        "affected_individuals\taffected_individuals\tPositive",
    ),
    (
        "test",
        'srilanka_floods\t869893414052122624\t869893414052122624_0\t"Death toll rises to 180" '
        "as rains ease in Sri Lanka https://t.co/Vb7nQx1Kc3\t"
        "data_image/srilanka_floods/31_5_2017/869893414052122624_0.jpg\tinjured_or_dead_people\t"
        "injured_or_dead_people\tinjured_or_dead_people\tPositive",
    ),
)
# The agreed-label split keeps the pairs whose labels agree once merged: vehicle_damage ->
# infrastructure_and_utility_damage, injured_or_dead_people -> affected_individuals.
CRISISMMD_AGREED_MERGES = {
    "vehicle_damage\tvehicle_damage\tvehicle_damage": (
        "vehicle_damage\tinfrastructure_and_utility_damage\tinfrastructure_and_utility_damage"
    ),
    "injured_or_dead_people\tinjured_or_dead_people\tinjured_or_dead_people": (
        "injured_or_dead_people\taffected_individuals\taffected_individuals"
    ),
}


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (90, 120, 150)).save(path)


def write_crisismmd(parent: Path) -> Path:
    """parent/CrisisMMD_v2.0/{data_image/..., crisismmd_datasplit_all/, crisismmd_datasplit_
    agreed_label/}; returns the top folder."""
    top = parent / "CrisisMMD_v2.0"
    every = top / "crisismmd_datasplit_all"
    agreed = top / "crisismmd_datasplit_agreed_label"
    every.mkdir(parents=True)
    agreed.mkdir()
    for split in ("train", "dev", "test"):
        lines = [line for name, line in CRISISMMD_ROWS if name == split]
        kept = []
        for line in lines:
            _image(top / line.split("\t")[4])
            labels = "\t".join(line.split("\t")[5:8])
            if line.endswith("Positive"):
                kept.append(line.replace(labels, CRISISMMD_AGREED_MERGES.get(labels, labels)))
        (every / f"task_humanitarian_text_img_{split}.tsv").write_text(
            "\n".join([CRISISMMD_HEADER, *lines]) + "\n", encoding="utf-8"
        )
        (agreed / f"task_humanitarian_text_img_agreed_lab_{split}.tsv").write_text(
            "\n".join([CRISISMMD_HEADER, *kept]) + "\n", encoding="utf-8"
        )
    return top


def write_hateful_memes(parent: Path) -> Path:
    root = parent / "hateful_memes"
    splits = {
        "train.jsonl": [
            (42951, 0, "when you finally get the weekend off"),
            (42958, 1, "look at them crawling over the border like vermin"),
        ],
        "dev_seen.jsonl": [(8291, 0, "my face when the coffee kicks in")],
        "test_seen.jsonl": [(16395, 1, "go back where you came from"), (37405, 0, "new puppy")],
    }
    for name, rows in splits.items():
        lines = []
        for meme_id, label, text in rows:
            _image(root / "img" / f"{meme_id:05d}.png")
            row = {"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": label, "text": text}
            lines.append(json.dumps(row, separators=(",", ":")))
        (root / name).write_text("\n".join(lines) + "\n")
    return root


MEDALPACA_CARDS = [
    {
        "input": "What is the relationship between very low Mg2+ levels and PTH secretion?",
        "output": "Very low Mg2+ levels inhibit PTH secretion, which results in low Ca2+.",
        "instruction": "Answer this question truthfully",
    },
    {
        "input": "Which nerve is at risk in a fracture of the surgical neck of the humerus?",
        "output": "The axillary nerve.",
        "instruction": "Answer this question truthfully",
    },
    {
        "input": "What is the first-line treatment of anaphylaxis?",
        "output": "Intramuscular epinephrine.",
        "instruction": "Answer this question truthfully",
    },
]


def write_medalpaca(parent: Path) -> Path:
    """parent/medical_meadow_wikidoc_medical_flashcards.json; returns its folder."""
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / "medical_meadow_wikidoc_medical_flashcards.json"
    path.write_text(json.dumps(MEDALPACA_CARDS, indent=4))
    return parent


def _vqa_rad_row(qid: int, image: str, phrase: str, question: str, answer: str) -> dict[str, Any]:
    closed = answer in ("Yes", "No")
    return {
        "qid": qid,
        "image_name": image,
        "image_case_url": "https://medpix.nlm.nih.gov/case?id=00000000-0000-0000-0000-000000000000",
        "image_organ": "CHEST",
        "evaluation": "not evaluated",
        "question": question,
        "question_rephrase": "NULL",
        "question_relation": "NULL",
        "question_frame": "NULL",
        "question_type": "PRES" if closed else "ABN",
        "phrase_type": phrase,
        "qid_linked_id": f"0{qid}a1b2c3",
        "answer": answer,
        "answer_type": "CLOSED" if closed else "OPEN",
    }


def write_vqa_rad(parent: Path) -> Path:
    root = parent / "VQA_RAD"
    rows = [
        _vqa_rad_row(0, "synpic54610.jpg", "freeform", "Is there a pneumothorax?", "No"),
        _vqa_rad_row(1, "synpic54610.jpg", "para", "Is a pneumothorax present?", "No"),
        _vqa_rad_row(2, "synpic29265.jpg", "test_freeform", "What is abnormal?", "cardiomegaly"),
        _vqa_rad_row(3, "synpic29265.jpg", "test_para", "Is the heart enlarged?", "Yes"),
    ]
    for name in ("synpic54610.jpg", "synpic29265.jpg"):
        _image(root / "VQA_RAD Image Folder" / name)
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows, indent=1))
    return root


def _slake_row(
    qid: int, img_id: int, lang: str, question: str, answer: str, kind: str
) -> dict[str, Any]:
    return {
        "img_id": img_id,
        "img_name": f"xmlab{img_id}/source.jpg",
        "question": question,
        "answer": answer,
        "q_lang": lang,
        "location": "Lung",
        "modality": "CT",
        "answer_type": kind,
        "base_type": "vqa",
        "content_type": "Organ",
        "triple": ["vhead", "_", "_"],
        "qid": qid,
    }


def write_slake(parent: Path) -> Path:
    """parent/Slake1.0/{train,validate,test}.json and imgs/xmlab<N>/source.jpg; returns parent."""
    base = parent / "Slake1.0"
    test = [
        _slake_row(11934, 102, "en", "What modality is used to take this image?", "CT", "OPEN"),
        _slake_row(11935, 102, "en", "Does the picture contain lung?", "Yes", "CLOSED"),
        _slake_row(11936, 102, "zh", "这张图片的成像方式是什么?", "CT", "OPEN"),
    ]
    train = [_slake_row(1, 1, "en", "Which organ is abnormal?", "Lung", "OPEN")]
    for img_id in (1, 102):
        _image(base / "imgs" / f"xmlab{img_id}" / "source.jpg")
    for name, rows in (("train.json", train), ("validate.json", train), ("test.json", test)):
        (base / name).write_text(json.dumps(rows, ensure_ascii=False, indent=4))
    return parent


RELEASES = {
    "hateful_memes": write_hateful_memes,
    "crisismmd": write_crisismmd,
    "medalpaca": write_medalpaca,
    "vqa_rad": write_vqa_rad,
    "slake": write_slake,
}
