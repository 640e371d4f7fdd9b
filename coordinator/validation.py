"""Checking a received update before it may touch the global adapter."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open

from shared.errors import UpdateRejected
from shared.tensor_codec import AdapterLayout, dtype_name


def validate_update_file(path: Path, layout: AdapterLayout) -> None:
    """Names, shapes, dtypes and finite values, tensor by tensor (one in memory at a time)."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:
        raise UpdateRejected(reason="malformed", detail=f"not valid safetensors: {exc}") from exc
    with handle:
        names = set(handle.keys())
        if names != layout.keys():
            missing, extra = sorted(layout.keys() - names), sorted(names - layout.keys())
            parts = [f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"] if missing else []
            parts += [f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}"] if extra else []
            raise UpdateRejected(reason="layout", detail="; ".join(parts))
        for name in sorted(names):
            tensor = handle.get_tensor(name)
            want = layout[name]
            if tuple(tensor.shape) != want.shape:
                raise UpdateRejected(
                    reason="shape",
                    detail=f"{name}: shape {list(tensor.shape)}, expected {list(want.shape)}",
                )
            if dtype_name(tensor.dtype) != want.dtype:
                raise UpdateRejected(
                    reason="dtype",
                    detail=f"{name}: dtype {dtype_name(tensor.dtype)}, expected {want.dtype}",
                )
            if not bool(torch.isfinite(tensor).all()):
                raise UpdateRejected(reason="non_finite", detail=f"{name}: NaN or Inf values")


def validate_update_meta(*, num_samples: int, mean_loss: float, gamma: float) -> None:
    if num_samples < 1:
        raise UpdateRejected(reason="metadata", detail="num_samples must be at least 1")
    if not math.isfinite(mean_loss):
        raise UpdateRejected(reason="metadata", detail=f"mean_loss is not finite ({mean_loss})")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise UpdateRejected(reason="metadata", detail=f"gamma must be finite and >= 0 ({gamma})")
