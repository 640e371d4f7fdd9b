"""The Strategy abstraction: which silos a round asks, how their updates are weighted and
folded, and how a round moves the global adapter. Concrete strategies override one step; the
run loop in federation.py is shared.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from coordinator.flat_adapter import FlatLayout
from coordinator.strategies.kernels import StepSums
from shared.tensor_codec import StateDict


@dataclass(frozen=True)
class StrategyParams:
    """Server-side hyperparameters; each strategy reads the ones it uses."""

    eta: float  # server learning rate
    tau: float = 1e-3  # adaptivity: FedAdam / FedYogi / FedAdagrad denominator offset
    beta1: float = 0.9  # first-moment decay
    beta2: float = 0.99  # second-moment decay (FedAdam, FedYogi)
    momentum: float = 0.9  # FedAvgM server momentum


class RoundAggregate:
    """What one round gives the strategy: `total` = Σ w_k Δ_k over the folded updates (or a
    robust rule's delta with weight_sum 1), the control-variate sum, and the counts."""

    def __init__(
        self, *, total: torch.Tensor, control_total: torch.Tensor | None, population: int
    ) -> None:
        self.total = total
        self.control_total = control_total
        self.population = population  # silos in the federation (SCAFFOLD's N)
        self.weight_sum = 0.0
        self.samples = 0
        self.sample_steps = 0.0  # Σ n_k τ_k, for FedNova
        self.updates = 0
        # buffers still holding an earlier round's values: the round's first fold writes them
        # instead of adding to them (a zeroing pass saved), and a fold that writes nothing
        # zeroes them at its end
        self.stale = {"total", "control_total"} if control_total is not None else {"total"}


class Strategy(ABC):
    """Folds updates as they arrive and moves the flat global weights once per round."""

    name: ClassVar[str]
    default_eta: ClassVar[float] = 1.0
    default_beta1: ClassVar[float] = 0.9  # server first-moment decay, where one is used
    uses_control_variates: ClassVar[bool] = False

    def __init__(self, *, layout: FlatLayout, params: StrategyParams) -> None:
        self.layout = layout
        self.params = params
        self.rounds_applied = 0
        self._sums: tuple[torch.Tensor, torch.Tensor | None] | None = None  # reused each round

    def select(self, available: list[str], k: int, rng: random.Random) -> list[str]:
        """The silos of a round: k of the available ones, uniformly (sorted for the record)."""
        return sorted(rng.sample(sorted(available), k))

    def update_weight(self, *, num_samples: int, steps: int) -> float:
        """How much one update counts in the round's sum (sample count by default)."""
        return float(num_samples)

    def begin_round(self, *, population: int) -> RoundAggregate:
        """An aggregate over the same buffers every round (one attempt at a time); the
        round's fold overwrites them (RoundAggregate.stale)."""
        if self._sums is None:
            control = self.layout.zeros() if self.uses_control_variates else None
            self._sums = (self.layout.zeros(), control)
        total, control = self._sums
        return RoundAggregate(total=total, control_total=control, population=population)

    def download_extras(self) -> StateDict:
        """Tensors sent to silos with the adapter (SCAFFOLD's server control variate)."""
        return {}

    def apply(self, x: torch.Tensor, aggregate: RoundAggregate) -> StepSums:
        """Move the flat global weights `x` in place by this round's aggregate; return the
        sum of the new weights (non-finite if any weight is) and the sum of the squares of
        `aggregate.total`, both from the step's own pass."""
        if aggregate.weight_sum <= 0:
            raise ValueError("no update was folded into this round")
        sums = self._step(x, aggregate)
        self.rounds_applied += 1
        return sums

    @abstractmethod
    def _step(self, x: torch.Tensor, aggregate: RoundAggregate) -> StepSums: ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Optimizer state to checkpoint (flat buffers and the step count)."""
        return {"rounds_applied": torch.tensor([self.rounds_applied], dtype=torch.int64)}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.rounds_applied = int(state["rounds_applied"].item())
