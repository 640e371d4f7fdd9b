"""How a silo uses its hardware: precision, gradient accumulation, batch prefetching, processes."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass

import torch

from shared.errors import FedMLLMError
from silo_agent.options import PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class HardwareError(FedMLLMError, ValueError):
    """The silo's hardware flags ask for something this model or machine cannot do."""


@dataclass(frozen=True)
class TrainingHardware:
    """How a round is computed; none of it changes the update a silo sends back."""

    micro_batch: int = 0  # samples per forward/backward, gradients accumulated; 0: whole batch
    loader_workers: int = 0  # processes preparing batches ahead of compute; 0: none
    prefetch: int = 2  # batches each loader worker prepares ahead


def resolve_precision(precision: str, device: torch.device) -> str:
    """bf16, fp16 or fp32; 'auto' is bf16 (fp16 where a GPU has no bf16) on CUDA, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in _DTYPES:
        raise HardwareError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HardwareError(f"{device} has no bf16: use --precision fp16")
    return precision


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the base weights and of autocast."""
    return _DTYPES[resolve_precision(precision, device)]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision compute below fp32; LoRA weights and the optimizer stay in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def hardware_from_arguments(args: argparse.Namespace, device: torch.device) -> TrainingHardware:
    workers = args.loader_workers
    if workers < 0:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", args.nproc_per_node))
        per_process = (os.cpu_count() or 1) // max(1, processes)
        workers = min(4, max(1, per_process - 1)) if device.type == "cuda" else 0
    return TrainingHardware(micro_batch=args.micro_batch, loader_workers=workers)
