"""Streaming, sample-weighted FedAvg: each validated update is folded into one running sum.

Coordinator memory is the global adapter, one running sum and the tensor being read, whatever
the number of silos; updates are read tensor by tensor from the received file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from shared.tensor_codec import StateDict


class FedAvgAccumulator:
    """Running sum of n_k * delta_k in float32; the round's delta is sum / total samples."""

    def __init__(self, global_adapter: StateDict) -> None:
        self._sum = {
            name: torch.zeros(t.shape, dtype=torch.float32) for name, t in global_adapter.items()
        }
        self.total_samples = 0
        self.updates = 0

    def fold_file(self, path: Path, num_samples: int) -> None:
        """Add one validated update (a safetensors file) with weight `num_samples`."""
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                self._sum[name].add_(handle.get_tensor(name).float(), alpha=float(num_samples))
        self.total_samples += num_samples
        self.updates += 1

    def fold(self, delta: StateDict, num_samples: int) -> None:
        for name, tensor in delta.items():
            self._sum[name].add_(tensor.float(), alpha=float(num_samples))
        self.total_samples += num_samples
        self.updates += 1

    def mean_delta(self) -> StateDict:
        if self.total_samples == 0:
            raise ValueError("no update was folded into this round")
        return {name: s / self.total_samples for name, s in self._sum.items()}


def apply_delta(global_adapter: StateDict, delta: StateDict) -> StateDict:
    """w + delta, computed in float32 and stored in each tensor's own dtype."""
    return {name: (w.float() + delta[name]).to(w.dtype) for name, w in global_adapter.items()}
