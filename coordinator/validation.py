"""Checking the numbers an update's header declares before its data is received."""

from __future__ import annotations

import math

from shared.errors import UpdateRejected


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
