"""Trial training steps: one forward and backward pass per modality mix, timed and measured.

`silo-agent check` runs them before a silo joins, so that whatever would fail in a round (a
batch the family cannot build, a forward pass that breaks, memory that runs out) fails here.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shared.silo_data import Sample
from silo_agent.batching import batch_mix, modality_kind
from silo_agent.failures import TrainingFailed, step_failures
from silo_agent.model import SiloModel


@dataclass(frozen=True)
class TrialStep:
    """One measured step: its mix, batch shape and time."""

    mix: str
    rows: int
    tokens: int  # sequence length of the batch
    seconds: float


def trial_batches(samples: Sequence[Sample], batch_size: int) -> list[list[Sample]]:
    """Per modality kind present, its `batch_size` longest-prompted samples; with several
    kinds, also one batch mixing them (one of each first, the others after)."""
    kinds: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: len(s.prompt), reverse=True):
        kinds.setdefault(modality_kind(sample), []).append(sample)
    batches = [group[:batch_size] for _, group in sorted(kinds.items())]
    if len(kinds) > 1:
        firsts = [group[0] for group in kinds.values()]
        rest = [s for group in kinds.values() for s in group[1:]]
        batches.append((firsts + rest)[: max(batch_size, len(firsts))])
    return batches


def trial_step(silo: SiloModel, samples: Sequence[Sample]) -> TrialStep:
    """Forward and backward on one batch, no optimizer step; gradients are dropped after."""
    mix = batch_mix(samples) if len({modality_kind(s) for s in samples}) == 1 else "mixed"
    silo.model.train()
    started = time.perf_counter()
    batch = silo.batch(samples)
    try:
        with step_failures(silo.family, f"{mix} batch"):
            loss = silo.forward(batch).loss
            if not torch.isfinite(loss):
                raise TrainingFailed(reason="non_finite_loss", detail=f"{mix} batch: loss {loss}")
            loss.backward()
    finally:
        silo.model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return TrialStep(mix, len(samples), int(batch["input_ids"].shape[1]), seconds)


def peak_memory(device: torch.device) -> str:
    """The peak so far: GPU memory allocated on CUDA, else the process's resident set."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB on {device}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kib = peak / 1024 if sys.platform == "darwin" else peak  # macOS reports bytes
    return f"{kib / 1024:.0f} MiB resident (this process)"
