"""FedAvg and FedAvgM (server momentum, Hsu et al. 2019)."""

from __future__ import annotations

import torch

from coordinator.flat_adapter import FlatLayout
from coordinator.strategies.base import RoundAggregate, Strategy, StrategyParams
from coordinator.strategies.kernels import StepSums, add_summed, fused, hyper, momentum_step


class FedAvg(Strategy):
    """x ← x + η Δ, with Δ the sample-weighted mean of the silos' deltas (η = 1 by default)."""

    name = "fedavg"

    def _step(self, x: torch.Tensor, aggregate: RoundAggregate) -> StepSums:
        return add_summed(x, aggregate.total, self.params.eta / aggregate.weight_sum)


class FedAvgM(Strategy):
    """Classic server momentum: u ← β u + Δ;  x ← x + η u  (u starts at 0)."""

    name = "fedavgm"

    def __init__(self, *, layout: FlatLayout, params: StrategyParams) -> None:
        super().__init__(layout=layout, params=params)
        self.velocity = layout.zeros()

    def _step(self, x: torch.Tensor, aggregate: RoundAggregate) -> StepSums:
        h = hyper(1.0 / aggregate.weight_sum, self.params.eta, self.params.momentum)
        sums: StepSums = fused(momentum_step)(x, self.velocity, aggregate.total, h)
        return sums

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "velocity": self.velocity}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(state)
        self.velocity.copy_(state["velocity"])
