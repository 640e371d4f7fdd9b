"""One round's server work through the coordinator's own code, against its memory floor.

Ours: the round's aggregate (Strategy.begin_round), each update measured as its chunks arrive
(the receiver's UpdateStatistics: finiteness, magnitude, norm; this is the validation), folded
from its spool in the canonical order (RoundFold over a memory map; the first fold writes the
running sum, the others add to it), and the step (GlobalModel.apply: the strategy's kernel
and the finiteness check). Validation is reported apart as well: it happens while the update
streams in, before the round needs it.
The floor: one `add_` per update of float32 values already in memory, then the step's own
floor (FedAvg: one `add_`; FedAdam: `torch._fused_adam_`, one pass over x, m, v, and the sum).

Chunks are cut as a silo cuts them; each is copied into a fresh bytes object before it is
measured (untimed), as `message.data` hands it to the receiver. Hashing and spooling are
transport (bench/transport.py). Every update is the same spool file: its pages come from
memory, not from the CPU's caches, exactly as distinct files' would.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from coordinator.aggregation.fold import AggregationRule, Arrival, RoundFold
from coordinator.aggregation.measure import UpdateStatistics
from coordinator.aggregation.receiver import ReceivedUpdate
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from coordinator.run_state import RunSpec
from shared.payload import BLOCK_ELEMENTS, CHUNK_BYTES
from shared.safetensors_stream import StateEncoder


@dataclass(frozen=True)
class Case:
    strategy: str  # fedavg or fedadam
    updates: int
    wire: str  # float32 or bfloat16


@dataclass
class Timing:
    ours: list[float]
    floor: list[float]
    validation: list[float]  # of ours: the measuring passes

    def row(self, case: Case) -> str:
        folds = [o - v for o, v in zip(self.ours, self.validation, strict=True)]
        with_validation = [o / f for o, f in zip(self.ours, self.floor, strict=True)]
        without = [o / f for o, f in zip(folds, self.floor, strict=True)]
        ms = lambda values: f"{1e3 * statistics.median(values):.0f}"  # noqa: E731
        ratio = lambda r: f"{min(r):.2f} / {statistics.median(r):.2f}"  # noqa: E731
        return (
            f"| {case.strategy} | {case.updates} | {case.wire} | {ms(self.floor)} | {ms(folds)} "
            f"| **{ratio(without)}** | {ms(self.validation)} | **{ratio(with_validation)}** |"
        )


HEADER = (
    "| strategy | updates | wire | floor ms | fold + step ms | / floor (min / median) | "
    "validation ms | fold + validation + step / floor (min / median) |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|"
)


class RoundBench:
    """The updates of one wire dtype: their chunks as a silo sends them, and one spool."""

    def __init__(self, *, flat: FlatLayout, delta: dict[str, torch.Tensor], wire: str, work: Path):
        self.flat = flat
        self.shape = UpdateShape(layout=flat, dtype=wire)
        encoder = StateEncoder(delta, dtype=getattr(torch, wire))
        _, *self.chunks = encoder.chunks(chunk_bytes=CHUNK_BYTES, block=BLOCK_ELEMENTS)
        self.spool = work / f"update-{wire}.bin"
        with self.spool.open("wb") as out:
            for chunk in self.chunks:
                out.write(chunk)
        self.nbytes = encoder.total_bytes

    def _measure(self) -> tuple[UpdateStatistics, float]:
        statistics_ = UpdateStatistics(self.shape)
        spent = 0.0
        for chunk in self.chunks:
            fresh = bytes(chunk)
            started = time.perf_counter()
            statistics_.consume(memoryview(fresh))
            spent += time.perf_counter() - started
        return statistics_, spent

    def ours(self, model: GlobalModel, updates: int) -> tuple[float, float]:
        """(seconds of the round's server work, seconds of it spent measuring)."""
        names = [f"silo-{i:03d}" for i in range(updates)]
        started = time.perf_counter()
        aggregate = model.begin_round(population=updates)
        fold = RoundFold(
            aggregate=aggregate, rule=AggregationRule(), selected=names, shape=self.shape
        )
        total = time.perf_counter() - started
        measuring = 0.0
        for name in names:
            measured, spent = self._measure()
            update = ReceivedUpdate(
                path=self.spool,
                dtype=self.shape.dtype,
                norm=measured.norm,
                nbytes=self.nbytes,
            )
            started = time.perf_counter()
            fold.add(name, Arrival(update=update, weight=10.0, num_samples=10, steps=1))
            total += time.perf_counter() - started + spent
            measuring += spent
        started = time.perf_counter()
        fold.finish()
        model.apply(aggregate)
        return total + time.perf_counter() - started, measuring


class Floor:
    """One add_ per in-memory float32 update, then the step's fused floor."""

    def __init__(self, numel: int) -> None:
        self.update = 0.01 * torch.randn(numel)
        self.total = torch.zeros(numel)
        self.x, self.m, self.v = torch.zeros(numel), torch.zeros(numel), torch.full((numel,), 1e-6)
        self.steps = [torch.tensor(0.0)]

    def __call__(self, strategy: str, updates: int) -> float:
        started = time.perf_counter()
        for _ in range(updates):
            self.total.add_(self.update)
        if strategy == "fedavg":
            self.x.add_(self.total, alpha=1.0 / updates)
        else:
            torch._fused_adam_(
                [self.x], [self.total], [self.m], [self.v], [], self.steps,
                lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.0, eps=1e-3,
                amsgrad=False, maximize=False,
            )  # fmt: skip
        return time.perf_counter() - started


def measure(
    cases: list[Case], *, flat: FlatLayout, delta: dict[str, torch.Tensor], repeats: int, work: Path
) -> dict[Case, Timing]:
    """Ours and the floor in turn within each repetition, after one warm-up of each."""
    wires = sorted({c.wire for c in cases})
    benches = {w: RoundBench(flat=flat, delta=delta, wire=w, work=work) for w in wires}
    floor = Floor(flat.numel)
    start = flat.unpack(flat.zeros())
    strategies = sorted({c.strategy for c in cases})
    models = {s: GlobalModel.start(RunSpec(strategy=s), flat, start) for s in strategies}
    del start
    timings = {c: Timing([], [], []) for c in cases}
    for repeat in range(repeats + 1):
        for case in cases:
            floor_s = floor(case.strategy, case.updates)
            ours_s, measuring = benches[case.wire].ours(models[case.strategy], case.updates)
            if repeat:
                timings[case].floor.append(floor_s)
                timings[case].ours.append(ours_s)
                timings[case].validation.append(measuring)
    return timings
