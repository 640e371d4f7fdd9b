"""The Strategy abstraction: which silos a round asks, how their updates are weighted and
folded, and how a round moves the global adapter. Concrete strategies override one step; the
run loop in federation.py is shared.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open

from coordinator.flat_adapter import FlatLayout
from shared.tensor_codec import CONTROL_PREFIX, AdapterLayout, StateDict, TensorLayout


@dataclass(frozen=True)
class StrategyParams:
    """Server-side hyperparameters; each strategy reads the ones it uses."""

    eta: float  # server learning rate
    tau: float = 1e-3  # adaptivity: FedAdam / FedYogi / FedAdagrad denominator offset
    beta1: float = 0.9  # first-moment decay
    beta2: float = 0.99  # second-moment decay (FedAdam, FedYogi)
    momentum: float = 0.9  # FedAvgM server momentum


class RoundAggregate:
    """Running sums of one round: Σ w_k Δ_k in one flat buffer, plus what strategies need."""

    def __init__(self, layout: FlatLayout, *, with_control: bool, population: int) -> None:
        self.layout = layout
        self.population = population  # silos in the federation (SCAFFOLD's N)
        self.total = layout.zeros()
        self.control_total = layout.zeros() if with_control else None
        self.weight_sum = 0.0
        self.samples = 0
        self.sample_steps = 0.0  # Σ n_k τ_k, for FedNova
        self.updates = 0
        self._index = layout.index()

    def fold(
        self,
        tensors: dict[str, torch.Tensor] | None,
        *,
        path: Path | None,
        weight: float,
        num_samples: int,
        steps: int,
    ) -> None:
        """Add one validated update: from a safetensors file (read tensor by tensor) or a dict."""
        if path is not None:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    self._add(name, handle.get_tensor(name), weight)
        else:
            assert tensors is not None
            for name, tensor in tensors.items():
                self._add(name, tensor, weight)
        self.weight_sum += weight
        self.samples += num_samples
        self.sample_steps += num_samples * steps
        self.updates += 1

    def _add(self, name: str, tensor: torch.Tensor, weight: float) -> None:
        if name.startswith(CONTROL_PREFIX):
            assert self.control_total is not None
            index = self._index[name.removeprefix(CONTROL_PREFIX)]
            self.layout.view(self.control_total, index).add_(tensor.float())
        else:
            self.layout.view(self.total, self._index[name]).add_(tensor.float(), alpha=weight)


class Strategy(ABC):
    """Folds updates as they arrive and moves the flat global weights once per round."""

    name: ClassVar[str]
    default_eta: ClassVar[float] = 1.0
    uses_control_variates: ClassVar[bool] = False

    def __init__(self, *, layout: FlatLayout, params: StrategyParams) -> None:
        self.layout = layout
        self.params = params
        self.rounds_applied = 0

    def select(self, available: list[str], k: int, rng: random.Random) -> list[str]:
        """The silos of a round: k of the available ones, uniformly (sorted for the record)."""
        return sorted(rng.sample(sorted(available), k))

    def update_weight(self, *, num_samples: int, steps: int) -> float:
        """How much one update counts in the round's sum (sample count by default)."""
        return float(num_samples)

    def begin_round(self, *, population: int) -> RoundAggregate:
        return RoundAggregate(
            self.layout, with_control=self.uses_control_variates, population=population
        )

    def update_layout(self) -> AdapterLayout:
        """What a silo's update must contain: the adapter delta (and control deltas)."""
        layout = dict(self.layout.adapter_layout)
        if self.uses_control_variates:
            for t in self.layout.tensors:
                name = CONTROL_PREFIX + t.name
                layout[name] = TensorLayout(name=name, shape=t.shape, dtype="float32")
        return layout

    def download_extras(self) -> StateDict:
        """Tensors sent to silos with the adapter (SCAFFOLD's server control variate)."""
        return {}

    def apply(self, x: torch.Tensor, aggregate: RoundAggregate) -> None:
        """Move the flat global weights `x` in place by this round's aggregate."""
        if aggregate.weight_sum <= 0:
            raise ValueError("no update was folded into this round")
        self._step(x, aggregate)
        self.rounds_applied += 1

    @abstractmethod
    def _step(self, x: torch.Tensor, aggregate: RoundAggregate) -> None: ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Optimizer state to checkpoint (flat buffers and the step count)."""
        return {"rounds_applied": torch.tensor([self.rounds_applied], dtype=torch.int64)}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.rounds_applied = int(state["rounds_applied"].item())
