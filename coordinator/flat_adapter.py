"""The global adapter as one contiguous float32 vector, with a view for each named tensor.

Server optimizers then run one fused kernel over a single buffer instead of a Python loop over
hundreds of small tensors, and every state (momentum, second moment, running sums) shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

from shared.tensor_codec import AdapterLayout, StateDict, TensorLayout, layout_of


@dataclass(frozen=True)
class FlatLayout:
    """Where each named tensor lives inside the flat vector, and its shape and dtype."""

    tensors: tuple[TensorLayout, ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def of(cls, state: StateDict) -> FlatLayout:
        return cls.from_layout(layout_of(state))

    @classmethod
    def from_layout(cls, layout: AdapterLayout) -> FlatLayout:
        tensors = tuple(layout[name] for name in sorted(layout))
        offsets, total = [], 0
        for tensor in tensors:
            offsets.append(total)
            total += prod(tensor.shape)
        return cls(tensors=tensors, offsets=tuple(offsets), numel=total)

    @property
    def adapter_layout(self) -> AdapterLayout:
        return {t.name: t for t in self.tensors}

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.numel, dtype=torch.float32)

    def view(self, flat: torch.Tensor, index: int) -> torch.Tensor:
        tensor, start = self.tensors[index], self.offsets[index]
        return flat[start : start + prod(tensor.shape)].view(tensor.shape)

    def index(self) -> dict[str, int]:
        return {t.name: i for i, t in enumerate(self.tensors)}

    def pack(self, state: StateDict) -> torch.Tensor:
        flat = self.zeros()
        for i, tensor in enumerate(self.tensors):
            self.view(flat, i).copy_(state[tensor.name])
        return flat

    def unpack(self, flat: torch.Tensor) -> StateDict:
        """Independent tensors in each layout dtype (never views into `flat`)."""
        return {
            t.name: self.view(flat, i).to(getattr(torch, t.dtype), copy=True)
            for i, t in enumerate(self.tensors)
        }
