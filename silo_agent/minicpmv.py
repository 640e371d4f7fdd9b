"""MiniCPM-V's calling convention (its own code, trust_remote_code): the paper's model.

MiniCPM-V 2.6 (and 4.x) takes one `data` dict, `forward(data, labels=...)`, built from its
processor's `input_ids`, `pixel_values` (per sample, a list of patch tensors), `tgt_sizes` and
`image_bound` (where the image slots lie in the tokens), plus `position_ids`. Prompts are
plain strings in which `(<image>./</image>)` marks the image. Each sample is encoded on its own
(the processor pads on the left and shifts `image_bound` to match) and the batch is assembled
here, padded on the right with the answer appended, as MiniCPM-V's fine-tuning collator does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModel
from PIL import Image
from transformers import ProcessorMixin

from shared.prompts import IMAGE_MARKER
from shared.silo_data import Sample
from silo_agent.batching import IGNORE_INDEX
from silo_agent.interfaces import Batch, to_device

IMAGE_PLACEHOLDER = "(<image>./</image>)"
# Per-sample lists the model reads as they come (never stacked into one tensor).
_PER_SAMPLE = ("pixel_values", "tgt_sizes", "image_bound")


def user_content(sample: Sample) -> str:
    """The user turn as MiniCPM-V's chat() writes it: the image placeholder where `<image>`
    stands (else first, on its own line)."""
    if not sample.has_image:
        return sample.prompt.replace(IMAGE_MARKER, "").strip()
    if IMAGE_MARKER in sample.prompt:
        return sample.prompt.replace(IMAGE_MARKER, IMAGE_PLACEHOLDER, 1)
    return f"{IMAGE_PLACEHOLDER}\n{sample.prompt}"


def _images(sample: Sample) -> list[Image.Image]:
    if sample.image is None:
        return []
    with Image.open(sample.image) as image:
        return [image.convert("RGB")]


class MiniCPMVInterface:
    """Batches, forward and generation in MiniCPM-V's convention."""

    def __init__(self, *, processor: ProcessorMixin) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer

    def _chat(self, sample: Sample, *, answer: bool) -> str:
        messages = [{"role": "user", "content": user_content(sample)}]
        if answer:
            messages.append({"role": "assistant", "content": sample.answer})
        text: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not answer
        )
        return text

    def _answer_ids(self, sample: Sample) -> list[int]:
        prompt, full = self._chat(sample, answer=False), self._chat(sample, answer=True)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not extend the prompt with the answer")
        ids: list[int] = self.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        return ids

    def _encode(self, samples: Sequence[Sample]) -> dict[str, Any]:
        prompts = [self._chat(s, answer=False) for s in samples]
        encoded: dict[str, Any] = self.processor(
            prompts, [_images(s) for s in samples], return_tensors="pt"
        )
        return encoded

    def training_batch(self, samples: Sequence[Sample]) -> Batch:
        rows = [self._encode([s]) for s in samples]
        answers = [self._answer_ids(s) for s in samples]
        prompts = [r["input_ids"][0] for r in rows]
        width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
        input_ids = torch.zeros((len(samples), width), dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(samples), width), dtype=torch.long)
        for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            end = len(prompt) + len(answer)
            input_ids[row, :end] = torch.cat([prompt.long(), torch.tensor(answer)])
            labels[row, len(prompt) : end] = torch.tensor(answer)
            attention[row, :end] = 1
        batch: Batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": torch.arange(width).expand(len(samples), width).clone(),
            "labels": labels,
        }
        for key in _PER_SAMPLE:
            batch[key] = [r[key][0] for r in rows]
        return batch

    def forward(self, model: PeftModel, batch: Batch) -> Any:
        data = {k: v for k, v in batch.items() if k != "labels"}
        if "labels" in batch:
            return model(data=data, labels=batch["labels"])
        return model(data=data)

    def generate(
        self, model: PeftModel, samples: Sequence[Sample], *, max_new_tokens: int
    ) -> list[str]:
        inputs = to_device(self._encode(samples), model.device)
        answers: list[str] = model.generate(
            input_ids=inputs["input_ids"],
            pixel_values=inputs["pixel_values"],
            tgt_sizes=inputs["tgt_sizes"],
            image_bound=inputs["image_bound"],
            attention_mask=inputs["attention_mask"],
            tokenizer=self.tokenizer,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            decode_text=True,
        )
        return [a.strip() for a in answers]

    def refusal(self, kinds: set[str]) -> str | None:
        return None
