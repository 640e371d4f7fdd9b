"""A generated meme-style data set in which the image and the text each carry part of the label.

A sample is hateful when its image is "warm" (red-dominant) or its caption uses a slur-like word;
each modality alone therefore decides only part of the samples, so missing modalities hurt.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from shared.prompts import HATEFUL_MEMES, PromptVariant, build_prompt
from shared.silo_data import record, write_split

_HOSTILE = ("vermin", "scum", "filth", "parasites")
_NEUTRAL = ("neighbors", "friends", "people", "colleagues")
_SUBJECTS = ("those folks", "the new arrivals", "everyone here", "the group next door")
_ENDINGS = ("today", "again", "as always", "right now", "for sure")
# Each modality flags its part of the label with this probability, so the classes are balanced.
_FLAG_RATE = 0.3


def noisy_image(rng: random.Random, base: tuple[int, int, int]) -> Image.Image:
    """A 32x32 image of one colour with per-pixel noise."""
    pixels = [
        tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in base) for _ in range(32 * 32)
    ]
    image = Image.new("RGB", (32, 32))
    image.putdata(pixels)
    return image


def _image(rng: random.Random, warm: bool) -> Image.Image:
    return noisy_image(rng, (200, 40, 40) if warm else rng.choice([(40, 60, 200), (40, 170, 60)]))


def meme(rng: random.Random) -> tuple[Image.Image, str, int]:
    """An image, a caption and the label they decide together (hateful: warm or hostile)."""
    warm, hostile = rng.random() < _FLAG_RATE, rng.random() < _FLAG_RATE
    return _image(rng, warm), _caption(rng, hostile), int(warm or hostile)


def _caption(rng: random.Random, hostile: bool) -> str:
    word = rng.choice(_HOSTILE if hostile else _NEUTRAL)
    return f"{rng.choice(_SUBJECTS)} are {word} {rng.choice(_ENDINGS)}"


def _sample(rng: random.Random, directory: Path, sample_id: str) -> dict[str, object]:
    image, caption, label = meme(rng)
    image_rel = f"images/{sample_id}.png"
    image.save(directory / image_rel)
    prompt = build_prompt(
        HATEFUL_MEMES, text=caption, has_image=True, variant=PromptVariant.ORIGINAL
    )
    return record(
        sample_id,
        image_rel,
        prompt,
        HATEFUL_MEMES.target(label),
        task="hateful_memes",
        text=caption,
        label=label,
    )


def write_silo(directory: Path, *, train: int, test: int, seed: int) -> Path:
    """One silo data directory with `train` and `test` samples, all with image and text."""
    rng = random.Random(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    name = directory.name
    write_split(
        directory, "train", [_sample(rng, directory, f"{name}-tr{i}") for i in range(train)]
    )
    if test:
        write_split(
            directory, "test", [_sample(rng, directory, f"{name}-te{i}") for i in range(test)]
        )
    return directory


def tokenizer_corpus() -> list[str]:
    """Text the demo tokenizer is trained on: every prompt form and every answer."""
    rng = random.Random(0)
    corpus = []
    for variant in PromptVariant:
        for has_image, has_text in ((True, True), (True, False), (False, True)):
            for _ in range(20):
                text = _caption(rng, rng.random() < 0.5) if has_text else None
                corpus.append(
                    build_prompt(HATEFUL_MEMES, text=text, has_image=has_image, variant=variant)
                )
    corpus += [HATEFUL_MEMES.target(i) for i in range(len(HATEFUL_MEMES.options))] * 20
    return corpus
