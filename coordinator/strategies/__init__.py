"""Server strategies, selectable per run by name."""

from __future__ import annotations

from coordinator.flat_adapter import FlatLayout
from coordinator.strategies.base import (
    RoundAggregate,
    Strategy,
    StrategyParams,
)
from coordinator.strategies.fedavg import FedAvg, FedAvgM
from coordinator.strategies.fednova import FedNova
from coordinator.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from coordinator.strategies.scaffold import Scaffold
from shared.tensor_codec import CONTROL_PREFIX

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, Scaffold, FedNova)
}


def build_strategy(
    name: str,
    *,
    layout: FlatLayout,
    eta: float | None,
    tau: float,
    beta1: float | None,
    beta2: float,
    momentum: float,
) -> Strategy:
    """A fresh strategy; `eta=None` and `beta1=None` take the strategy's defaults."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
    params = StrategyParams(
        eta=cls.default_eta if eta is None else eta,
        tau=tau,
        beta1=cls.default_beta1 if beta1 is None else beta1,
        beta2=beta2,
        momentum=momentum,
    )
    return cls(layout=layout, params=params)


__all__ = [
    "CONTROL_PREFIX",
    "STRATEGIES",
    "RoundAggregate",
    "Strategy",
    "StrategyParams",
    "build_strategy",
]
