"""The client learning rate across rounds, and the training plan each round task carries.

The warm-up lasts ceil(1% of the rounds) rounds and ends at the base rate, so no round ever runs
above it (the reference code's warm-up ran round 0 at twice the base rate).
"""

from __future__ import annotations

import math

from coordinator.run_state import RunSpec
from shared.wire.v1 import federation_pb2 as pb

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


def training_plan(spec: RunSpec, index: int) -> pb.TrainingPlan:
    """What round `index` asks of its silos."""
    return pb.TrainingPlan(
        learning_rate=client_learning_rate(
            base=spec.learning_rate,
            round_index=index,
            rounds=spec.rounds,
            schedule=spec.lr_schedule,
        ),
        local_epochs=spec.local_epochs,
        batch_size=spec.batch_size,
        seed=spec.seed * 100_003 + index,
        proximal_mu=spec.proximal_mu,
        gamma_max=spec.gamma_max,
        mask_skip_layers=spec.mask_skip_layers,
        prompt_variant=spec.prompt_variant,
        control_variates=spec.strategy == "scaffold",
        wire_dtype=spec.wire_dtype,
        local_optimizer=spec.local_optimizer or default_local_optimizer(spec.strategy),
    )


def default_local_optimizer(strategy: str) -> str:
    """SCAFFOLD's control variates and FedNova's normalisation assume local SGD steps (with
    AdamW, a variate grows to hundreds of times the gradient it corrects); AdamW otherwise."""
    return "sgd" if strategy in ("scaffold", "fednova") else "adamw"
