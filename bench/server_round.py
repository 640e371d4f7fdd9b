"""One round's server work through the coordinator's own code, against its memory floor.

Ours: the round's aggregate (Strategy.begin_round); each update measured as its chunks
arrive (the receiver's UpdateStatistics: finiteness, magnitude, norm: the validation) and,
while it is next in the canonical order, folded live in the same pass (LiveFold: each
measured block added to the running sum while its bytes are in the cache); the updates that
arrived out of order folded from their spools once their turn comes (RoundFold over a memory
map); then the step (GlobalModel.apply: the strategy's kernel and the finiteness check).
Updates arrive one after another in one of three orders: the fold's own (every update folded
live), reversed (only the last to arrive, the first in the order, is folded live; each of the
others is measured on arrival and read again from its spool, all of them in one pass over the
sum once the first arrives) and a seeded shuffle between.
The floor: one `add_` per update of float32 values already in memory, then the step's own
floor (FedAvg: one `add_`; FedAdam: `torch._fused_adam_`, one pass over x, m, v, and the sum).

Chunks are cut as a silo cuts them; each is copied into a fresh bytes object, as
`message.data` hands it to the receiver (untimed: transport, bench/transport.py), and CRC-checked
with the receiver's own check as the receiver checks it: in the pass that folds it live
(native.add_measured_chunk) or measures it on arrival (native.check_chunk). The check is
transport too: the seconds it took (PayloadCheck.seconds: inside those passes the CRC's share,
timed around each call of it, and divided by the threads that ran it where several did) are
taken off ours, and every update's CRC-32 is verified against its bytes'. Spooling is transport too:
each update has a spool file of its own, written (and synced, as an upload that took seconds
on the network would leave it) before the wire's cases, untimed.
"""

from __future__ import annotations

import os
import random
import statistics
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from coordinator.aggregation import native
from coordinator.aggregation.fold import AggregationRule, Arrival, RoundFold
from coordinator.aggregation.live import LiveFold
from coordinator.aggregation.measure import UpdateStatistics
from coordinator.aggregation.receiver import ReceivedUpdate
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from coordinator.run_state import RunSpec
from shared.payload import BLOCK_ELEMENTS, CHUNK_BYTES, PayloadCheck, PayloadDigest
from shared.safetensors_stream import StateEncoder

ORDERS = ("fold's", "shuffled", "reversed")


@dataclass(frozen=True)
class Case:
    strategy: str  # fedavg or fedadam
    updates: int
    wire: str  # float32 or bfloat16
    order: str = ORDERS[0]  # of arrival

    def arrival(self) -> list[str]:
        names = [f"silo-{i:03d}" for i in range(self.updates)]
        if self.order == "reversed":
            return names[::-1]
        if self.order == "shuffled":
            random.Random(self.updates).shuffle(names)
        return names


# This machine's memory runs at two speeds that change on their own (an `add_` of 150M values
# takes 16-19 ms in the faster phase, 28-34 in the slower). Repetitions whose floors lie within
# LEVEL of the fastest among them ran at one speed, and so did the next such group if its
# median floor is within LEVEL of theirs (a speed whose floors spread wider than LEVEL is one
# speed, not two); a speed needs LEVEL_REPS repetitions; a repetition at none (a speed too few
# met, or a stalled floor) is left out, so that a row reads as one phase.
LEVEL = 1.3
LEVEL_REPS = 3


def phases(floors: list[float]) -> tuple[dict[str, list[int]], int]:
    """The repetitions (indices) at each memory speed their `floors` show, named "faster" and
    "slower" where there are two, "one only" where one, "mixed" (all of them) where no speed
    holds LEVEL_REPS; and how many fit none."""
    remaining = sorted(range(len(floors)), key=lambda i: floors[i])
    groups: list[list[int]] = []
    median = lambda group: statistics.median(floors[i] for i in group)  # noqa: E731
    while remaining:
        base = floors[remaining[0]]
        group = [i for i in remaining if floors[i] < LEVEL * base]
        remaining = remaining[len(group) :]
        if groups and median(group) < LEVEL * median(groups[-1]):
            groups[-1] += group
        else:
            groups.append(group)
    levels = [group for group in groups if len(group) >= LEVEL_REPS]
    if not levels:
        return {"mixed": list(range(len(floors)))}, 0
    names = {1: ["one only"], 2: ["faster", "slower"]}.get(len(levels)) or [
        f"speed {n + 1}" for n in range(len(levels))
    ]
    named = dict(zip(names, levels, strict=True))
    return named, len(floors) - sum(len(level) for level in levels)


def left_out_note(left_out: list[str]) -> str:
    """The line under a table that names the rows whose repetitions were left out."""
    return (
        f"\nLeft out, at a speed fewer than {LEVEL_REPS} of their row's repetitions met or with a "
        f"stalled floor: {'; '.join(left_out)}."
    )


@dataclass
class Timing:
    ours: list[float]
    floor: list[float]
    arriving: list[float]  # of ours: measuring (and folding live) as updates arrive

    def rows(self, case: Case) -> tuple[list[str], int]:
        """A row per memory speed the repetitions met, and how many met neither."""
        levels, stray = phases(self.floor)
        lines = []
        for phase, picked in reversed(levels.items()):
            ours, floor = [self.ours[i] for i in picked], [self.floor[i] for i in picked]
            ratios = [o / f for o, f in zip(ours, floor, strict=True)]
            ms = lambda values: f"{1e3 * statistics.median(values):.0f}"  # noqa: E731
            lines.append(
                f"| {case.strategy} | {case.updates} | {case.wire} | {case.order} | {phase} "
                f"| {len(picked)} | {ms(floor)} | {ms(ours)} "
                f"| {ms([self.arriving[i] for i in picked])} "
                f"| **{min(ratios):.2f} / {statistics.median(ratios):.2f}** |"
            )
        return lines, stray


HEADER = (
    "| strategy | updates | wire | arrival order | memory phase | repetitions | floor ms | ours ms "
    "| of which on arrival ms | ours / floor (min / median) |\n"
    "|---|---:|---|---|---|---:|---:|---:|---:|---:|"
)


def arriving(chunks: list[bytes]) -> Iterator[bytes]:
    """Each chunk as the receiver gets it: copied into a fresh bytes object, as `message.data`
    hands it on (transport: done while the caller's clock is stopped, before each is
    yielded)."""
    for chunk in chunks:
        yield bytes(chunk)


def checked(chunks: list[bytes]) -> Iterator[bytes]:
    """`arriving`, each chunk CRC-checked by the receiver's check before it is yielded (as a
    receiver that checks, then adds, would; untimed)."""
    check = PayloadCheck(crc32=native.crc32)
    for fresh in arriving(chunks):
        check.update(fresh)
        yield fresh


class RoundBench:
    """The updates of one wire dtype: their chunks as a silo sends them, and their spools."""

    def __init__(self, *, flat: FlatLayout, delta: dict[str, torch.Tensor], wire: str, work: Path):
        self.flat = flat
        self.shape = UpdateShape(layout=flat, dtype=wire)
        encoder = StateEncoder(delta, dtype=getattr(torch, wire))
        _, *self.chunks = encoder.chunks(chunk_bytes=CHUNK_BYTES, block=BLOCK_ELEMENTS)
        self.work = work
        self.nbytes = encoder.total_bytes
        crc32 = 0  # of the data chunks, by zlib: what the receiver's check must have seen
        for chunk in self.chunks:
            crc32 = zlib.crc32(chunk, crc32)
        self.digest = PayloadDigest(sum(map(len, self.chunks)), crc32=crc32)

    def spool(self, index: int) -> Path:
        """Where the update of the `index`-th silo is spooled (one file per silo, shared by
        the wires, written by `write_spools`)."""
        return self.work / f"update-{index:03d}.bin"

    def write_spools(self, count: int) -> None:
        """Each silo's update in a file of its own, synced: pages of memory apart, as
        distinct uploads' are."""
        for index in range(count):
            with self.spool(index).open("wb") as out:
                for chunk in self.chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())

    def _arrive(
        self, live: LiveFold | None, spool: IO[bytes], path: Path
    ) -> tuple[UpdateStatistics, float]:
        """Measure one update as its chunks arrive (folding it live if `live` is granted)."""
        statistics_ = UpdateStatistics(self.shape, sink=live)
        check = PayloadCheck(crc32=native.crc32)
        spent = 0.0
        for fresh in arriving(self.chunks):
            started = time.perf_counter()
            if live is not None:
                live.resume(statistics_.element, spool, path)
            statistics_.consume(fresh, check)
            spent += time.perf_counter() - started
        check.verify(self.digest)
        return statistics_, spent - check.seconds

    def ours(self, model: GlobalModel, case: Case) -> tuple[float, float]:
        """(seconds of the round's server work, seconds of it spent as updates arrived)."""
        arrival = case.arrival()
        started = time.perf_counter()
        aggregate = model.begin_round(population=case.updates)
        fold = RoundFold(
            aggregate=aggregate, rule=AggregationRule(), selected=arrival, shape=self.shape
        )
        total = time.perf_counter() - started
        arriving = 0.0
        for name in arrival:
            path = self.spool(int(name.removeprefix("silo-")))
            with path.open("ab") as spool:  # flushed by a live fold that catches up
                started = time.perf_counter()
                live = fold.offer(name, 10.0)
                offered = time.perf_counter() - started
                measured, spent = self._arrive(live, spool, path)
                update = ReceivedUpdate(
                    path=path, dtype=self.shape.dtype, norm=measured.norm, nbytes=self.nbytes
                )
                started = time.perf_counter()
                accepted = Arrival(update=update, weight=10.0, num_samples=10, steps=1)
                fold.add(name, accepted, live=live)
                total += time.perf_counter() - started + spent + offered
                arriving += spent + offered
        started = time.perf_counter()
        fold.finish()
        model.apply(aggregate)
        return total + time.perf_counter() - started, arriving


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
        return time.perf_counter() - started + self._step(strategy, updates)

    def received(self, chunks: list[bytes], strategy: str, updates: int) -> float:
        """The same, each update added chunk by chunk from fresh buffers as they arrive (each
        chunk as `checked` hands it on, as the coordinator's round gets it): the floor of
        adding what the network delivers."""
        spent = 0.0
        for _ in range(updates):
            at = 0
            for fresh in checked(chunks):
                started = time.perf_counter()
                values = torch.frombuffer(fresh, dtype=torch.float32)
                self.total[at : at + values.numel()].add_(values)
                spent += time.perf_counter() - started
                at += values.numel()
        return spent + self._step(strategy, updates)

    def _step(self, strategy: str, updates: int) -> float:
        started = time.perf_counter()
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
        for wire, bench in benches.items():
            wired = [c for c in cases if c.wire == wire]
            bench.write_spools(max(c.updates for c in wired))
            floor("fedavg", 1)  # (the first add_ after writing gigabytes is slow, whoever runs it)
            for case in wired:
                floor_s = floor(case.strategy, case.updates)
                ours_s, arriving = bench.ours(models[case.strategy], case)
                if repeat:
                    timings[case].floor.append(floor_s)
                    timings[case].ours.append(ours_s)
                    timings[case].arriving.append(arriving)
    return timings
