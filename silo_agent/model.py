"""Loading the base vision-language model and its processor from a local directory, with LoRA."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from shared.adapter import (
    canonical_config,
    config_fingerprint,
    default_lora_config,
    language_attention_targets,
    load_base_config,
    lora_json,
)
from shared.tensor_codec import AdapterLayout, layout_of

log = logging.getLogger(__name__)
# PEFT calls a transformers API deprecated for v6 on every training step; nothing a silo
# operator (or a benchmark's reader) can act on
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@dataclass
class SiloModel:
    """The base model with the federation's LoRA attached, its processor and its identity."""

    model: PeftModel
    processor: ProcessorMixin
    device: torch.device
    canonical_config: dict[str, Any]
    lora: LoraConfig

    @property
    def fingerprint(self) -> str:
        return config_fingerprint(self.canonical_config)

    @property
    def adapter_layout(self) -> AdapterLayout:
        return layout_of(get_peft_model_state_dict(self.model))

    @property
    def lora_config_json(self) -> str:
        return lora_json(self.lora)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _quantization(quantize: str | None, device: torch.device) -> dict[str, Any]:
    if quantize is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return {"dtype": dtype}
    if quantize != "4bit":
        raise ValueError(f"unsupported quantization {quantize!r}; only '4bit' is offered")
    from transformers import BitsAndBytesConfig  # bitsandbytes is imported only when asked for

    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        ),
        "device_map": {"": device.index or 0} if device.type == "cuda" else "cpu",
        "dtype": compute,
    }


def load_silo_model(
    model_dir: Path,
    *,
    device: str = "auto",
    quantize: str | None = None,
    lora_r: int = 8,
    lora_alpha: int = 8,
    lora_dropout: float = 0.05,
) -> SiloModel:
    """Base model and processor through the Auto classes, local files only; LoRA attached."""
    config = load_base_config(model_dir)
    target = pick_device(device)
    processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    if not isinstance(processor, ProcessorMixin):
        raise ValueError(
            f"{model_dir}: AutoProcessor gave {type(processor).__name__}, "
            "not a multimodal processor"
        )
    base = AutoModelForImageTextToText.from_pretrained(
        str(model_dir), local_files_only=True, **_quantization(quantize, target)
    )
    if quantize is None:
        base.to(target)  # type: ignore[arg-type]  # transformers types .to() narrowly
    lora = default_lora_config(language_attention_targets(base))
    lora.r, lora.lora_alpha, lora.lora_dropout = lora_r, lora_alpha, lora_dropout
    model = get_peft_model(base, lora)
    return SiloModel(
        model=model,
        processor=processor,
        device=target,
        canonical_config=canonical_config(config),
        lora=lora,
    )
