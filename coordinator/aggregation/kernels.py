"""Adding an update into a float32 running sum at the memory floor, whatever its wire dtype.

A float32 update is one `add_`. A bfloat16 or float16 update is widened inside one fused
loop (read 2 bytes, read and write 4): PyTorch's `add_` of a float32 tensor and a 16-bit one
is about six times slower than the same-dtype `add_` (measured: 182 vs 27 ms over 150M
values), and widening a block first costs an extra pass (39 ms).
"""

from __future__ import annotations

import torch

from coordinator.strategies.kernels import fused, hyper


def add_widened(total: torch.Tensor, values: torch.Tensor, h: torch.Tensor) -> None:
    """total += values * h[0], values widened to float32 inside the loop."""
    total.copy_(total + values.float() * h[0])


def write_widened(total: torch.Tensor, values: torch.Tensor, h: torch.Tensor) -> None:
    """total = values * h[0], values widened to float32 inside the loop."""
    total.copy_(values.float() * h[0])


def add_scaled(total: torch.Tensor, values: torch.Tensor, alpha: float, *, write: bool) -> None:
    """total += alpha * values in place, or total = alpha * values if `write` (the same
    value, bit for bit, as adding to zeros)."""
    if values.dtype == total.dtype:
        if write:
            torch.mul(values, alpha, out=total)
        else:
            total.add_(values, alpha=alpha)
    else:
        fused(write_widened if write else add_widened)(total, values, hyper(alpha))
