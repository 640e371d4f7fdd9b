"""SCAFFOLD (Karimireddy et al., 2020) with the silos' control variates.

Server: x ← x + η Δ (sample-weighted mean delta);  c ← c + (1/N) Σ_{k∈S} Δc_k, N the number of
silos that joined the federation. Silos correct each local gradient by (c - c_k) and return
Δc_k = -c - Δ_k / (K η_l) (option II of the paper, K local steps, η_l the local learning rate).
"""

from __future__ import annotations

import torch

from coordinator.flat_adapter import FlatLayout
from coordinator.strategies.base import RoundAggregate, Strategy, StrategyParams
from coordinator.strategies.kernels import StepSums, add_summed
from shared.tensor_codec import CONTROL_PREFIX, StateDict


class Scaffold(Strategy):
    name = "scaffold"
    uses_control_variates = True

    def __init__(self, *, layout: FlatLayout, params: StrategyParams) -> None:
        super().__init__(layout=layout, params=params)
        self.control = layout.zeros()

    def download_extras(self) -> StateDict:
        return {
            CONTROL_PREFIX + t.name: self.layout.view(self.control, i).clone()
            for i, t in enumerate(self.layout.tensors)
        }

    def _step(self, x: torch.Tensor, aggregate: RoundAggregate) -> StepSums:
        assert aggregate.control_total is not None
        population = max(aggregate.population, aggregate.updates)
        self.control.add_(aggregate.control_total, alpha=1.0 / population)
        return add_summed(x, aggregate.total, self.params.eta / aggregate.weight_sum)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "control": self.control}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(state)
        self.control.copy_(state["control"])
