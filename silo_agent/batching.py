"""Turning samples into model batches: chat template, images, and loss only on the answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import PaliGemmaProcessor, ProcessorMixin

from shared.prompts import IMAGE_MARKER
from shared.silo_data import Sample

IGNORE_INDEX = -100
# Processor outputs laid out along the token sequence: (rows, tokens, ...).
SEQUENCE_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "mm_token_type_ids",
    "cross_attention_mask",
)


def modality_kind(sample: Sample) -> str:
    """'image+text', 'image only' or 'text only'."""
    if sample.has_image and sample.has_text:
        return "image+text"
    return "image only" if sample.has_image else "text only"


def batch_mix(samples: Sequence[Sample]) -> str:
    """The modality mix of a batch, e.g. 'image+text, text only'."""
    return ", ".join(sorted({modality_kind(s) for s in samples}))


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


def render_chat(
    processor: ProcessorMixin, messages: list[dict[str, Any]], *, add_generation_prompt: bool
) -> str:
    """The processor's chat template rendered by its tokenizer: the same text as the
    processor's own rendering, without the video settings some processors look up first."""
    template = processor.chat_template
    if isinstance(template, dict):
        template = template["default"]
    text: str = processor.tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    return text


def prompt_texts(processor: ProcessorMixin, samples: Sequence[Sample]) -> list[str]:
    """The prompts through the chat template; without one (PaliGemma) the bare question after
    the processor's image token, to which the processor adds its own separators."""
    if processor.chat_template is None:
        return [
            (getattr(processor, "image_token", "") if s.has_image else "")
            + s.prompt.replace(IMAGE_MARKER, "").strip()
            for s in samples
        ]
    return [render_chat(processor, [user_message(s)], add_generation_prompt=True) for s in samples]


def answer_suffixes(processor: ProcessorMixin, samples: Sequence[Sample]) -> list[str]:
    """What follows the prompt for the assistant's answer (answer plus end-of-turn)."""
    if processor.chat_template is None:
        return [s.answer + processor.tokenizer.eos_token for s in samples]
    suffixes = []
    for sample, prompt in zip(samples, prompt_texts(processor, samples), strict=True):
        answer = {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]}
        full = render_chat(processor, [user_message(sample), answer], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not extend the prompt with the answer")
        suffixes.append(full[len(prompt) :])
    return suffixes


def answer_token_type(processor: ProcessorMixin) -> int:
    """token_type_ids of answer tokens: PaliGemma's prefix (0) attends bidirectionally, so its
    answer must be the causal suffix (1); elsewhere token types mark images, and text is 0."""
    return 1 if isinstance(processor, PaliGemmaProcessor) else 0


def encode_prompts(processor: ProcessorMixin, samples: Sequence[Sample]) -> dict[str, Any]:
    """The processor's encoding of the prompts, padded on the right."""
    processor.tokenizer.padding_side = "right"
    encoded: dict[str, Any] = processor(
        text=prompt_texts(processor, samples),
        images=user_images(samples),
        padding=True,
        padding_side="right",
        return_tensors="pt",
    )
    mask = encoded["attention_mask"]
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1])
    if not torch.equal(mask.bool(), positions < lengths.unsqueeze(1)):
        raise ValueError(f"{type(processor).__name__} padded the prompts on the left")
    return encoded


def training_batch(processor: ProcessorMixin, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Prompt through the processor, answer tokens appended; labels only on answer tokens.

    Appending tokenised answers (instead of masking a prompt length measured on the joined
    text) keeps the loss mask exact whatever the tokenizer merges at the boundary.
    """
    encoded = encode_prompts(processor, samples)
    answers = [
        processor.tokenizer(s, add_special_tokens=False)["input_ids"]
        for s in answer_suffixes(processor, samples)
    ]
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    width = max(n + len(a) for n, a in zip(lengths, answers, strict=True))
    sequence = [k for k in SEQUENCE_KEYS if k in encoded]
    batch = {k: v for k, v in encoded.items() if k not in sequence}
    pad_id = processor.tokenizer.pad_token_id or 0
    for key in sequence:
        shape = (len(samples), width, *encoded[key].shape[2:])
        batch[key] = torch.full(
            shape, pad_id if key == "input_ids" else 0, dtype=encoded[key].dtype
        )
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (length, answer) in enumerate(zip(lengths, answers, strict=True)):
        end = length + len(answer)
        for key in sequence:
            batch[key][row, :length] = encoded[key][row, :length]
        batch["input_ids"][row, length:end] = torch.tensor(answer)
        batch["attention_mask"][row, length:end] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][row, length:end] = answer_token_type(processor)
        if "cross_attention_mask" in batch:
            # answer tokens see the images the prompt's last token sees (Mllama)
            batch["cross_attention_mask"][row, length:end] = encoded["cross_attention_mask"][
                row, length - 1
            ]
        labels[row, length:end] = torch.tensor(answer)
    batch["labels"] = labels
    return batch
