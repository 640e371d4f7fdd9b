"""How a model family is called: its training batches, its forward pass and its generation.

Every family transformers ships takes the processor's tensors as keyword arguments; MiniCPM-V's
own code (trust_remote_code) takes one `data` dict instead (silo_agent.minicpmv).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from peft import PeftModel
from transformers import PaliGemmaProcessor, ProcessorMixin

from shared.silo_data import Sample
from silo_agent.batching import prompt_texts, training_batch, user_images

Batch = dict[str, Any]


class ModelInterface(Protocol):
    """What the trainer, the evaluator and `check` need from a family."""

    def training_batch(self, samples: Sequence[Sample]) -> Batch:
        """Model inputs with `labels` (-100 everywhere but on answer tokens)."""
        ...

    def forward(self, model: PeftModel, batch: Batch) -> Any:
        """The model's output (`logits`, and `loss` when the batch has labels)."""
        ...

    def generate(
        self, model: PeftModel, samples: Sequence[Sample], *, max_new_tokens: int
    ) -> list[str]:
        """Greedy answers to the samples' prompts."""
        ...

    def refusal(self, kinds: set[str]) -> str | None:
        """Why samples of these modality kinds cannot be trained, or None."""
        ...


def to_device(value: Any, device: torch.device, *, non_blocking: bool = False) -> Any:
    """Tensors moved to `device`, inside lists and dicts too (asynchronously from pinned
    memory with `non_blocking`)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device, non_blocking=non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking=non_blocking) for k, v in value.items()}
    return value


class ProcessorInterface:
    """A family transformers ships: its processor's outputs go to the model as keywords."""

    def __init__(self, *, processor: ProcessorMixin) -> None:
        self.processor = processor

    def training_batch(self, samples: Sequence[Sample]) -> Batch:
        return training_batch(self.processor, samples)

    def forward(self, model: PeftModel, batch: Batch) -> Any:
        return model(**batch)

    def generate(
        self, model: PeftModel, samples: Sequence[Sample], *, max_new_tokens: int
    ) -> list[str]:
        tokenizer = self.processor.tokenizer
        inputs = self.processor(
            text=prompt_texts(self.processor, samples),
            images=user_images(samples),
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        # PaliGemma's processor adds labels of its own; generation takes none
        inputs = to_device({k: v for k, v in inputs.items() if k != "labels"}, model.device)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def refusal(self, kinds: set[str]) -> str | None:
        if isinstance(self.processor, PaliGemmaProcessor) and "text only" in kinds:
            return "PaliGemma's processor needs an image in every sample"
        return None
