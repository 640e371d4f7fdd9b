"""A round's optimizer steps as one process computes them: its shard of each batch, cut into
micro-batches, prepared ahead of compute by DataLoader workers."""

from __future__ import annotations

import functools
import math
import multiprocessing
import multiprocessing.context
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from shared.silo_data import Sample
from silo_agent.batching import IGNORE_INDEX
from silo_agent.failures import TrainingFailed
from silo_agent.hardware import TrainingHardware
from silo_agent.interfaces import Batch
from silo_agent.model import SiloModel, prepare_batch
from silo_agent.replicas import SiloGroup

Prepare = Callable[[Sequence[Sample]], Batch]
Chunk = tuple[list[Sample], bool]  # samples, and whether their loss counts


class MicroBatch(NamedTuple):
    """One forward/backward pass, prepared in host memory (a NamedTuple: DataLoader pins it)."""

    batch: Batch | None  # None when the samples could not be batched
    tokens: int  # answer tokens, over which the model's loss is a mean
    counted: bool  # False: a stand-in that keeps the processes in step; its loss weighs 0
    failure: str  # why the samples could not be batched, else ""


def round_batches(
    samples: Sequence[Sample], batch_size: int, seed: int, epoch: int
) -> list[list[Sample]]:
    """One epoch's batches in the round's seeded order: each is one optimizer step."""
    generator = torch.Generator().manual_seed(seed * 1_000 + epoch)
    order = torch.randperm(len(samples), generator=generator).tolist()
    return [
        [samples[i] for i in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]


def micro_chunks(batch: list[Sample], *, rank: int, world_size: int, micro: int) -> list[Chunk]:
    """This rank's samples of `batch` (every world_size-th) in micro-batches. Every rank gets
    the same number of passes, as DDP needs: a rank with fewer samples (or none, when the batch
    is smaller than the group) pads with uncounted passes over the batch's first sample."""
    per_rank = math.ceil(len(batch) / world_size)
    size = micro or per_rank
    shard = batch[rank::world_size]
    chunks = [(shard[i : i + size], True) for i in range(0, len(shard), size)]
    return chunks + [([batch[0]], False)] * (math.ceil(per_rank / size) - len(chunks))


def answer_tokens(batch: Batch) -> int:
    """Tokens the causal loss is averaged over: labelled ones after the first position."""
    labels: torch.Tensor = batch["labels"]
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


class RoundSteps(Dataset[list[MicroBatch]]):
    """Item i: the micro-batches of step i for this rank, batched by the family's processor."""

    def __init__(self, *, prepare: Prepare, steps: list[list[Chunk]]) -> None:
        self.prepare = prepare
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> list[MicroBatch]:
        return [self._micro(samples, counted) for samples, counted in self.steps[index]]

    def _micro(self, samples: list[Sample], counted: bool) -> MicroBatch:
        try:
            batch = self.prepare(samples)
        except TrainingFailed as exc:  # raised by the trainer, in step with the other ranks
            return MicroBatch(None, 0, counted, exc.detail)
        return MicroBatch(batch, answer_tokens(batch) if counted else 0, counted, "")


def step_batches(
    silo: SiloModel,
    batches: list[list[Sample]],
    *,
    hardware: TrainingHardware,
    group: SiloGroup,
) -> Iterable[list[MicroBatch]]:
    """The steps' micro-batches in order; with workers, prepared while earlier steps compute,
    and in pinned memory when the model is on a GPU."""
    steps = [
        micro_chunks(b, rank=group.rank, world_size=group.world_size, micro=hardware.micro_batch)
        for b in batches
    ]
    dataset = RoundSteps(
        prepare=functools.partial(prepare_batch, silo.interface, silo.family), steps=steps
    )
    workers = hardware.loader_workers
    return DataLoader(
        dataset,
        batch_size=None,  # an item is already a step's batches
        collate_fn=_as_prepared,
        num_workers=workers,
        multiprocessing_context=_worker_context() if workers else None,
        prefetch_factor=hardware.prefetch if workers else None,
        pin_memory=silo.device.type == "cuda",
        generator=torch.Generator(),  # worker seeds drawn from it, not from the dropout RNG
    )


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers forked from a server process that holds no gRPC threads: a fork of the agent
    itself copies its live channel, stream and heartbeat threads mid-flight, and such a child
    can abort as it starts. The server imports this module once; a worker then costs a fork
    and the round's steps (pickled), not an interpreter start."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _as_prepared(step: list[MicroBatch]) -> list[MicroBatch]:
    return step
