"""The processes that train one silo together: one, or N on one host under torch.distributed."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from shared.tensor_codec import StateDict
from silo_agent.hardware import HardwareError


@dataclass
class SiloGroup:
    """This process's place among the silo's training processes (rank 0 talks to the
    coordinator); every collective here is called by all of them in the same order."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _networks: dict[int, torch.nn.Module] = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def network(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the forward pass runs through: the model, or its DDP wrapper, made once (the
        ranks load identical weights and this round's adapter, so nothing is synced at init).
        Unused LoRA weights (e.g. Mllama's cross-attention on a text-only shard) are allowed."""
        if not self.distributed:
            return model
        if id(model) not in self._networks:
            self._networks[id(model)] = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                init_sync=False,
                forward_sync_buffers=False,
                find_unused_parameters=True,
            )
        return self._networks[id(model)]

    @staticmethod
    def accumulating(
        network: torch.nn.Module, *, last: bool
    ) -> contextlib.AbstractContextManager[None]:
        """Gradients stay local until the step's last micro-batch, whose backward all-reduces."""
        if isinstance(network, DistributedDataParallel) and not last:
            return network.no_sync()
        return contextlib.nullcontext()

    def sums(self, values: list[torch.Tensor | float]) -> list[float]:
        """Each value summed over the processes (one small collective)."""
        stacked = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.distributed:
            stacked = stacked.to(self.device)
            dist.all_reduce(stacked)
        return [float(v) for v in stacked.cpu()]

    def broadcast(self, state: StateDict) -> StateDict:
        """Rank 0's tensors, on every rank (others pass tensors of the same layout)."""
        if not self.distributed:
            return state
        out: StateDict = {}
        for names, flat in _flat_by_dtype(state, self.device):
            dist.broadcast(flat, src=0)
            out |= _unflatten(names, flat, state)
        return out

    def mean(self, state: StateDict) -> StateDict:
        """The mean over the processes of each tensor (identical under DDP: a guard that the
        rank that uploads sends what all of them computed)."""
        if not self.distributed:
            return state
        out: StateDict = {}
        for names, flat in _flat_by_dtype(state, self.device):
            dist.all_reduce(flat)
            out |= _unflatten(names, flat.div_(self.world_size), state)
        return out


def _flat_by_dtype(state: StateDict, device: torch.device) -> list[tuple[list[str], torch.Tensor]]:
    """One flat buffer per dtype, so that a whole adapter moves in a few collectives."""
    groups: dict[torch.dtype, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(tensor.dtype, []).append(name)
    return [
        (names, torch.cat([state[n].reshape(-1) for n in names]).to(device))
        for names in groups.values()
    ]


def _unflatten(names: list[str], flat: torch.Tensor, like: StateDict) -> StateDict:
    out: StateDict = {}
    offset = 0
    for name in names:
        size = like[name].numel()
        out[name] = flat[offset : offset + size].view_as(like[name]).cpu().clone()
        offset += size
    return out


_GROUP: SiloGroup | None = None


def silo_group(*, device: torch.device, timeout_s: float = 1800.0) -> SiloGroup:
    """This process's group, joined on first use: one process, or the N that torchrun
    started (NCCL between GPUs, gloo on CPU)."""
    global _GROUP
    if _GROUP is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
            )
        rank = dist.get_rank() if world > 1 else 0
        _GROUP = SiloGroup(rank=rank, world_size=world, device=device)
    return _GROUP


def rank_device(requested: str) -> str:
    """The device of this process: under torchrun, 'auto' and 'cuda' mean this local rank's
    GPU (a fixed 'cuda:N' would put every rank on one GPU)."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return requested
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return f"cuda:{local}"
    if requested.startswith("cuda:"):
        raise HardwareError(
            f"--device {requested} names one GPU for every process: use --device cuda"
        )
    return requested


def shard_base_weights(model: torch.nn.Module, group: SiloGroup) -> tuple[int, int]:
    """FSDP over the frozen base: each decoder (and vision) block and the rest of the model
    sharded across the ranks, moved to this rank's device; the LoRA weights stay whole on
    every rank, where DDP keeps them in step (fully_shard leaves ignored weights in place).
    Returns the parameters this rank holds, and the model's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh(group.device.type, (group.world_size,))
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, ignored_params=_trainable(module))
    fully_shard(model, mesh=mesh, ignored_params=_trainable(model))
    for param in _trainable(model):
        param.data = param.data.to(group.device)
    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    return held, sum(p.numel() for p in model.parameters())


def _trainable(module: torch.nn.Module) -> set[torch.nn.Parameter]:
    return {p for p in module.parameters() if p.requires_grad}
