"""Loading the base vision-language model and its processor from a local directory, with LoRA."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import PretrainedConfig, ProcessorMixin

from shared.adapter import (
    canonical_config,
    config_fingerprint,
    default_lora_config,
    language_attention_targets,
    load_base_config,
    load_model_config,
    lora_json,
    model_auto_class,
)
from shared.processors import load_processor
from shared.silo_data import Sample
from shared.tensor_codec import AdapterLayout, layout_of
from silo_agent.batching import batch_mix, modality_kind
from silo_agent.failures import TrainingFailed
from silo_agent.interfaces import Batch, ModelInterface, ProcessorInterface, to_device

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
    family: str  # the model type, e.g. qwen2_5_vl
    interface: ModelInterface

    def batch(self, samples: Sequence[Sample]) -> Batch:
        """A training batch on the model's device; a failure names the family and the mix."""
        try:
            batch = self.interface.training_batch(samples)
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TrainingFailed(
                reason="batching",
                detail=f"{self.family}: cannot batch {batch_mix(samples)} samples ({first_line})",
            ) from exc
        return dict(to_device(batch, self.device))

    def forward(self, batch: Batch) -> Any:
        return self.interface.forward(self.model, batch)

    def refusal(self, samples: Sequence[Sample]) -> str | None:
        """Why this family cannot train these samples (e.g. text-only ones), or None."""
        kinds = Counter(modality_kind(s) for s in samples)
        reason = self.interface.refusal(set(kinds))
        if reason is None:
            return None
        mix = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return f"{self.family}: {reason}; the data holds {mix}"

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


def interface_for(config: PretrainedConfig, processor: ProcessorMixin) -> ModelInterface:
    if config.model_type == "minicpmv":
        from silo_agent.minicpmv import MiniCPMVInterface  # MiniCPM-V's own calling convention

        return MiniCPMVInterface(processor=processor)
    return ProcessorInterface(processor=processor)


def load_silo_model(
    model_dir: Path,
    *,
    device: str = "auto",
    quantize: str | None = None,
    lora_r: int = 8,
    lora_alpha: int = 8,
    lora_dropout: float = 0.05,
    trust_remote_code: bool = False,
) -> SiloModel:
    """Base model and processor from local files only, LoRA attached. With
    `trust_remote_code`, the directory's own code builds them (e.g. MiniCPM-V 2.6)."""
    identity = load_base_config(model_dir)  # what the coordinator compares: never runs code
    config = load_model_config(model_dir, trust_remote_code=trust_remote_code)
    auto = model_auto_class(config, trust_remote_code=trust_remote_code)
    target = pick_device(device)
    processor = load_processor(model_dir, trust_remote_code=trust_remote_code)
    base = auto.from_pretrained(
        str(model_dir),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        **_quantization(quantize, target),
    )
    if quantize is None:
        base.to(target)
    lora = default_lora_config(language_attention_targets(base))
    lora.r, lora.lora_alpha, lora.lora_dropout = lora_r, lora_alpha, lora_dropout
    model = get_peft_model(base, lora)
    return SiloModel(
        model=model,
        processor=processor,
        device=target,
        canonical_config=canonical_config(identity),
        lora=lora,
        family=str(config.model_type),
        interface=interface_for(config, processor),
    )


def model_from_arguments(args: argparse.Namespace) -> SiloModel:
    return load_silo_model(
        args.model,
        device=args.device,
        quantize=args.quantize,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        trust_remote_code=args.trust_remote_code,
    )
