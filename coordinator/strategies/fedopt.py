"""Adaptive federated optimisation (Reddi et al., 2021): FedAdam, FedYogi, FedAdagrad.

Shared maths in FedOpt; each variant supplies only its fused second-moment kernel:
  Δ = Σ n_k Δ_k / Σ n_k
  m ← β1 m + (1 - β1) Δ
  v ← β2 v + (1 - β2) Δ²            (FedAdam)
  v ← v - (1 - β2) Δ² sign(v - Δ²)  (FedYogi)
  v ← v + Δ²                        (FedAdagrad)
  x ← x + η m / (√v + τ)
with m starting at 0, v at τ², and no bias correction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from coordinator.flat_adapter import FlatLayout
from coordinator.strategies.base import RoundAggregate, Strategy, StrategyParams
from coordinator.strategies.kernels import (
    StepSums,
    adagrad_step,
    adam_step,
    fused,
    hyper,
    yogi_step,
)


class FedOpt(Strategy):
    default_eta = 1e-3
    kernel: ClassVar[Callable[..., StepSums]]

    def __init__(self, *, layout: FlatLayout, params: StrategyParams) -> None:
        super().__init__(layout=layout, params=params)
        self.m = layout.zeros()
        self.v = torch.full((layout.numel,), params.tau**2, dtype=torch.float32)

    def _step(self, x: torch.Tensor, aggregate: RoundAggregate) -> StepSums:
        p = self.params
        h = hyper(1.0 / aggregate.weight_sum, p.eta, p.beta1, p.beta2, p.tau)
        sums: StepSums = fused(type(self).kernel)(x, self.m, self.v, aggregate.total, h)
        return sums

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "m": self.m, "v": self.v}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(state)
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])


class FedAdam(FedOpt):
    name = "fedadam"
    kernel = staticmethod(adam_step)


class FedYogi(FedOpt):
    name = "fedyogi"
    kernel = staticmethod(yogi_step)


class FedAdagrad(FedOpt):
    """No server momentum by default (β₁ = 0), as Reddi et al.'s reference code and Flower."""

    name = "fedadagrad"
    default_beta1 = 0.0
    kernel = staticmethod(adagrad_step)
