"""Turning samples into model batches: chat template, images, and loss only on the answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import ProcessorMixin

from shared.prompts import IMAGE_MARKER
from shared.silo_data import Sample

IGNORE_INDEX = -100


def user_message(sample: Sample) -> dict[str, Any]:
    """The user turn as chat content items; the image goes where `<image>` stands (else first)."""
    content: list[dict[str, str]] = []
    text = sample.prompt
    if sample.has_image:
        before, marker, after = text.partition(IMAGE_MARKER)
        if marker and before:
            content.append({"type": "text", "text": before})
        content.append({"type": "image"})
        text = after if marker else text
    else:
        text = text.replace(IMAGE_MARKER, "")
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def user_images(samples: Sequence[Sample]) -> list[list[Image.Image]] | None:
    if not any(s.has_image for s in samples):
        return None
    images: list[list[Image.Image]] = []
    for sample in samples:
        if sample.image is None:
            images.append([])
            continue
        with Image.open(sample.image) as image:
            images.append([image.convert("RGB")])
    return images


def prompt_texts(processor: ProcessorMixin, samples: Sequence[Sample]) -> list[str]:
    return [
        processor.apply_chat_template([user_message(s)], tokenize=False, add_generation_prompt=True)
        for s in samples
    ]


def answer_suffixes(processor: ProcessorMixin, samples: Sequence[Sample]) -> list[str]:
    """What the chat template appends for the assistant's answer (answer plus end-of-turn)."""
    suffixes = []
    for sample, prompt in zip(samples, prompt_texts(processor, samples), strict=True):
        answer = {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]}
        full = processor.apply_chat_template([user_message(sample), answer], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not extend the prompt with the answer")
        suffixes.append(full[len(prompt) :])
    return suffixes


def training_batch(processor: ProcessorMixin, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Prompt through the processor, answer tokens appended; labels only on answer tokens.

    Appending tokenised answers (instead of masking a prompt length measured on the joined
    text) keeps the loss mask exact whatever the tokenizer merges at the boundary.
    """
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    encoded = processor(
        text=prompt_texts(processor, samples),
        images=user_images(samples),
        padding=True,
        return_tensors="pt",
    )
    answers = [
        tokenizer(s, add_special_tokens=False)["input_ids"]
        for s in answer_suffixes(processor, samples)
    ]
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    width = max(n + len(a) for n, a in zip(lengths, answers, strict=True))
    rows = len(samples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_token = [
        k
        for k, v in encoded.items()
        if isinstance(v, torch.Tensor) and v.shape[:2] == encoded["input_ids"].shape
    ]
    batch = {k: v for k, v in encoded.items() if k not in per_token}
    for key in per_token:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.full((rows, width), fill, dtype=encoded[key].dtype)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    for row, (length, answer) in enumerate(zip(lengths, answers, strict=True)):
        end = length + len(answer)
        for key in per_token:
            batch[key][row, :length] = encoded[key][row, :length]
        batch["input_ids"][row, length:end] = torch.tensor(answer)
        batch["attention_mask"][row, length:end] = 1
        labels[row, length:end] = torch.tensor(answer)
    batch["labels"] = labels
    return batch
