"""Loading the base vision-language model and its processor from a local directory, with LoRA."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

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
from silo_agent.hardware import (
    HardwareError,
    autocast,
    compute_dtype,
    resolve_precision,
)
from silo_agent.interfaces import Batch, ModelInterface, ProcessorInterface, to_device
from silo_agent.replicas import rank_device, shard_base_weights, silo_group

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
    compute_dtype: torch.dtype = torch.float32  # base weights and autocast; LoRA stays fp32

    def host_batch(self, samples: Sequence[Sample]) -> Batch:
        """A training batch in host memory; a failure names the family and the mix."""
        return prepare_batch(self.interface, self.family, samples)

    def batch(self, samples: Sequence[Sample]) -> Batch:
        """A training batch on the model's device."""
        return dict(to_device(self.host_batch(samples), self.device))

    def forward(self, batch: Batch, *, network: torch.nn.Module | None = None) -> Any:
        """The model's output under the silo's precision; `network` is the model's DDP
        wrapper when several processes train it."""
        with autocast(self.device, self.compute_dtype):
            return self.interface.forward(cast(PeftModel, network or self.model), batch)

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


def prepare_batch(interface: ModelInterface, family: str, samples: Sequence[Sample]) -> Batch:
    """`interface.training_batch`, its failures as TrainingFailed naming the family and mix
    (a function of picklable parts, so that DataLoader workers can run it)."""
    try:
        return interface.training_batch(samples)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingFailed(
            reason="batching",
            detail=f"{family}: cannot batch {batch_mix(samples)} samples ({first_line})",
        ) from exc


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _load_options(quantize: str | None, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained's dtype and, for 4-bit, NF4 weights computed in `dtype`."""
    if quantize is None:
        return {"dtype": dtype}
    if quantize != "4bit":
        raise ValueError(f"unsupported quantization {quantize!r}; only '4bit' is offered")
    from transformers import BitsAndBytesConfig  # bitsandbytes is imported only when asked for

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        ),
        "device_map": {"": device.index or 0} if device.type == "cuda" else "cpu",
        "dtype": dtype,
    }


def enable_gradient_checkpointing(model: PeftModel, family: str) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them;
    non-reentrant, so that LoRA dropout masks and DDP's hooks see the same pass twice and the
    input embeddings need not require grad (transformers makes them, which breaks models that
    write image features into them in place, such as MiniCPM-V)."""
    base = cast(PreTrainedModel, model.get_base_model())
    if not base.supports_gradient_checkpointing:
        raise HardwareError(f"{family} does not support --gradient-checkpointing; drop the flag")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    base.disable_input_require_grads()


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
    precision: str = "auto",
    gradient_checkpointing: bool = False,
) -> SiloModel:
    """Base model and processor from local files only, LoRA attached. With
    `trust_remote_code`, the directory's own code builds them (e.g. MiniCPM-V 2.6)."""
    identity = load_base_config(model_dir)  # what the coordinator compares: never runs code
    config = load_model_config(model_dir, trust_remote_code=trust_remote_code)
    auto = model_auto_class(config, trust_remote_code=trust_remote_code)
    target = pick_device(device)
    dtype = compute_dtype(precision, target)
    processor = load_processor(model_dir, trust_remote_code=trust_remote_code)
    base = auto.from_pretrained(
        str(model_dir),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        **_load_options(quantize, target, dtype),
    )
    if quantize is None:
        base.to(target)
    lora = default_lora_config(language_attention_targets(base))
    lora.r, lora.lora_alpha, lora.lora_dropout = lora_r, lora_alpha, lora_dropout
    model = get_peft_model(base, lora)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model, str(config.model_type))
    return SiloModel(
        model=model,
        processor=processor,
        device=target,
        canonical_config=canonical_config(identity),
        lora=lora,
        family=str(config.model_type),
        interface=interface_for(config, processor),
        compute_dtype=dtype,
    )


def model_from_arguments(args: argparse.Namespace) -> SiloModel:
    """The model as the flags say; under torchrun on this rank's GPU, or with `--shard fsdp`
    loaded on the host and sharded across the ranks."""
    device = rank_device(args.device)
    target = pick_device(device)
    shard = getattr(args, "shard", "none") == "fsdp"  # a flag of silo-agent, not of `check`
    silo = load_silo_model(
        args.model,
        device="cpu" if shard else device,
        quantize=args.quantize,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        trust_remote_code=args.trust_remote_code,
        precision=resolve_precision(args.precision, target),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if shard:
        group = silo_group(device=target, timeout_s=args.dist_timeout)
        held, total = shard_base_weights(silo.model, group)
        silo.device = target
        log.info("FSDP: rank %d holds %d of the model's %d parameters", group.rank, held, total)
    return silo
