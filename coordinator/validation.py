"""Checking a received update before it may touch the global adapter."""

from __future__ import annotations

import math
from pathlib import Path

from safetensors import safe_open

from shared.errors import UpdateRejected
from shared.tensor_codec import AdapterLayout, dtype_name

# No LoRA delta comes near this; far below it, the float32 running sums cannot overflow.
MAX_ABS_VALUE = 1e6


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
            peak = float(tensor.abs().max()) if tensor.numel() else 0.0
            if not math.isfinite(peak):
                raise UpdateRejected(reason="non_finite", detail=f"{name}: NaN or Inf values")
            if peak > MAX_ABS_VALUE:
                raise UpdateRejected(
                    reason="magnitude", detail=f"{name}: |value| {peak:.3g} above {MAX_ABS_VALUE:g}"
                )


def validate_update_meta(
    *,
    num_samples: int,
    declared_samples: int,
    max_samples: int,
    steps: int,
    max_steps: int,
    mean_loss: float,
    gamma: float,
    gamma_max: float,
) -> None:
    """The header's numbers, each of which weighs in the aggregate or the run's history,
    within what this silo and this run make possible."""
    bound = min(declared_samples, max_samples)
    if not 1 <= num_samples <= bound:
        raise UpdateRejected(
            reason="metadata",
            detail=f"num_samples {num_samples} outside 1..{bound} "
            f"(declared at join {declared_samples}, run cap {max_samples})",
        )
    if not 1 <= steps <= max_steps:
        raise UpdateRejected(
            reason="metadata", detail=f"steps {steps} outside 1..{max_steps} for these samples"
        )
    if not (math.isfinite(mean_loss) and mean_loss >= 0):
        raise UpdateRejected(
            reason="metadata", detail=f"mean_loss must be finite and >= 0 ({mean_loss:.6g})"
        )
    if not (math.isfinite(gamma) and 0 <= gamma <= gamma_max):
        raise UpdateRejected(
            reason="metadata", detail=f"gamma {gamma:.6g} outside [0, {gamma_max:g}] of this run"
        )


def max_local_steps(*, num_samples: int, batch_size: int, local_epochs: int) -> int:
    """Optimizer steps one round can take: one per (last partial) batch of every epoch."""
    return -(-num_samples // max(batch_size, 1)) * local_epochs
