"""The client learning rate across rounds: linear warm-up, then cosine decay to zero.

The warm-up lasts ceil(1% of the rounds) rounds and ends at the base rate, so no round ever runs
above it (the reference code's warm-up ran round 0 at twice the base rate).
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def client_learning_rate(
    *,
    base: float,
    round_index: int,
    rounds: int,
    schedule: str = "cosine",
    warmup_fraction: float = 0.01,
) -> float:
    """The learning rate of round `round_index` (1-based) of `rounds`."""
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    step = round_index - 1
    warmup = max(1, math.ceil(warmup_fraction * rounds))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, rounds - warmup)
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))
