"""Checking the numbers an update's header declares before its data is received."""

from __future__ import annotations

import math

from shared.errors import UpdateRejected

# Far above any cross-entropy a language model reports (ln of its vocabulary, ~12, at worst a
# few hundred while diverging); far below what would overflow a round's weighted mean.
MAX_MEAN_LOSS = 1e6


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
    if not 0 <= mean_loss <= MAX_MEAN_LOSS:  # NaN fails too
        raise UpdateRejected(
            reason="metadata",
            detail=f"mean_loss {mean_loss:.6g} outside [0, {MAX_MEAN_LOSS:g}]",
        )
    if not (math.isfinite(gamma) and 0 <= gamma <= gamma_max):
        raise UpdateRejected(
            reason="metadata", detail=f"gamma {gamma:.6g} outside [0, {gamma_max:g}] of this run"
        )


def max_local_steps(*, num_samples: int, batch_size: int, local_epochs: int) -> int:
    """Optimizer steps one round can take: one per (last partial) batch of every epoch."""
    return -(-num_samples // max(batch_size, 1)) * local_epochs
