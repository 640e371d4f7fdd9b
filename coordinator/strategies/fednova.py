"""FedNova (Wang et al., 2020): normalised averaging by each silo's number of local steps.

x ← x + η τ_eff Σ p_k Δ_k / τ_k, with p_k = n_k / Σ n, τ_k the silo's local steps and
τ_eff = Σ p_k τ_k. Silos that ran more steps no longer pull the average towards their optimum.
"""

from __future__ import annotations

import torch

from coordinator.strategies.base import RoundAggregate, Strategy
from coordinator.strategies.kernels import StepSums, add_summed


class FedNova(Strategy):
    name = "fednova"

    def update_weight(self, *, num_samples: int, steps: int) -> float:
        return num_samples / max(steps, 1)

    def _step(self, x: torch.Tensor, aggregate: RoundAggregate) -> StepSums:
        tau_eff = aggregate.sample_steps / aggregate.samples
        return add_summed(x, aggregate.total, self.params.eta * tau_eff / aggregate.samples)
