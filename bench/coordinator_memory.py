"""Coordinator memory against the number of silos downloading and uploading at once.

    python -m bench.coordinator_memory [--silos 2 8 16 32] [--rounds 3] [--long 20]
                                       [--adapter-mb 50] [--write-docs]

For each S, a real coordinator process and S protocol-level silos (bench/protocol_silo.py) in
this process, each with its own certificate and mutual-TLS connection. A FedAvg run on a
float32 wire selects all S every round: S silos download the adapter and upload a full-size
update at once. The coordinator's RSS is sampled every 20 ms: before the run (every silo
joined), the lowest of each round (idle) and the highest (its peak). Idle is the lowest RSS of
any round after the first: the master weights, the running sum and the round's download are
held then. Figures are in adapters (the float32
adapter's size). The largest S runs `--long` rounds, to show whether the idle RSS climbs round
after round.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.docs import replace_section
from bench.load import process_usage, start_coordinator
from bench.protocol_silo import join_request, start_silos
from bench.sized_model import sized_model
from coordinator.run_state import RunSpec
from shared.pki import create_federation
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

MIB = 1024 * 1024


@dataclass
class Sampler:
    """RSS of a process every `interval_s`, tagged with the rounds completed at the time."""

    pid: int
    interval_s: float = 0.02
    rounds_done: int = 0
    samples: list[tuple[int, float]] = field(default_factory=list)  # (rounds done, MiB)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((self.rounds_done, process_usage(self.pid)[0]))

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Memory:
    silos: int
    adapter_mib: float
    before_mib: float
    idle_mib: list[float]  # per round: its lowest RSS (the first round's is before it starts)
    peak_mib: list[float]  # per round: its highest RSS

    def adapters(self, mib: float) -> float:
        return mib / self.adapter_mib

    def row(self) -> str:
        idle, peak = min(self.idle_mib[1:]), max(self.peak_mib)
        return (
            f"| {self.silos} | {self.before_mib:.0f} | {idle:.0f} | {peak:.0f} | "
            f"**{self.adapters(peak - idle):.1f}** | {self.adapters(peak - self.before_mib):.1f} |"
        )


HEADER = (
    "| silos at once | RSS before the run MiB | idle MiB | peak MiB | peak above idle (adapters) | "
    "peak above before (adapters) |\n|---:|---:|---:|---:|---:|---:|"
)


def _admin(port: int, certs: Path) -> tuple[grpc.aio.Channel, pb_grpc.AdminStub]:
    cert, key, ca = TlsFiles.in_directory(certs, "admin").read()
    channel = grpc.aio.secure_channel(
        f"localhost:{port}", grpc.ssl_channel_credentials(ca, key, cert)
    )
    return channel, pb_grpc.AdminStub(channel)


async def _drive(port: int, certs: Path, model: Path, silos: int, rounds: int, pid: int) -> Memory:
    names = [f"silo-{i:03d}" for i in range(silos)]
    fleet = await start_silos(target=f"127.0.0.1:{port}", certs=certs, names=names, model_dir=model)
    channel, admin = _admin(port, certs)
    sampler = Sampler(pid)
    try:
        await asyncio.sleep(2.0)
        before = process_usage(pid)[0]
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        spec = RunSpec(
            rounds=rounds, silos_per_round=silos, min_silos=silos, round_deadline_s=600,
            wire_dtype="float32",
        )  # fmt: skip
        await admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()), timeout=60)
        while True:
            status = await admin.GetStatus(pb.StatusRequest(), timeout=60)
            sampler.rounds_done = status.completed_rounds
            if status.state != pb.RUN_STATE_RUNNING:
                break
            await asyncio.sleep(0.05)
        sampler.stop()
        thread.join()
        if status.state != pb.RUN_STATE_COMPLETED:
            raise RuntimeError(f"the run ended {pb.RunState.Name(status.state)}: {status.message}")
    finally:
        sampler.stop()
        await asyncio.gather(*(s.stop() for s in fleet))
        await channel.close(None)
    per_round = [[m for r, m in sampler.samples if r == i] for i in range(rounds)]
    adapter_mib = sum(4 * math.prod(t.shape) for t in join_request(model).adapter_layout) / MIB
    return Memory(
        silos=silos,
        adapter_mib=adapter_mib,
        before_mib=before,
        idle_mib=[min(s) for s in per_round if s],
        peak_mib=[max(s) for s in per_round if s],
    )


def measure(silos: int, *, rounds: int, adapter_mb: int, work: Path) -> Memory:
    names = [f"silo-{i:03d}" for i in range(silos)]
    certs = work / "pki"
    create_federation(certs, hosts=["localhost", "127.0.0.1"], silos=names, admins=["admin"])
    model = sized_model(work / "model", adapter_bytes=adapter_mb * 10**6)
    process, port = start_coordinator(work, certs, model)
    try:
        return asyncio.run(_drive(port, certs, model, silos, rounds, process.pid))
    finally:
        process.terminate()
        process.wait(30)


def _slope(values: list[float]) -> float:
    """Least-squares MiB per round."""
    xs = range(len(values))
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(values)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / spread


def long_run_text(memory: Memory) -> str:
    idle, peak = memory.idle_mib[1:], memory.peak_mib[1:]
    return (
        f"Rounds 2 to {len(idle) + 1} at {memory.silos} silos: idle RSS {idle[0]:.0f} MiB in "
        f"round 2, {idle[-1]:.0f} MiB in the last (highest {max(idle):.0f}; trend "
        f"{_slope(idle):+.1f} MiB a round); peak {peak[0]:.0f} MiB in round 2, "
        f"{peak[-1]:.0f} MiB in the last (highest {max(peak):.0f}, "
        f"{memory.adapters(max(peak) - min(idle)):.1f} adapters above the lowest idle)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[2, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per silo count")
    parser.add_argument("--long", type=int, default=20, help="rounds at the largest count")
    parser.add_argument("--adapter-mb", type=int, default=50, help="float32 adapter size")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    results = []
    for silos in args.silos:
        rounds = args.long if silos == max(args.silos) else args.rounds
        with tempfile.TemporaryDirectory() as work:
            memory = measure(silos, rounds=rounds, adapter_mb=args.adapter_mb, work=Path(work))
        results.append(memory)
        print(memory.row(), flush=True)
    adapter = results[0].adapter_mib
    text = "\n".join(
        [
            f"Adapter: {adapter:.1f} MiB of float32; every silo downloads and uploads it in "
            "every round.\n",
            HEADER,
            *(m.row() for m in results),
            "",
            long_run_text(results[-1]),
        ]
    )
    print(text)
    if args.write_docs:
        replace_section(Path("docs/benchmarks.md"), "coordinator-memory", text)


if __name__ == "__main__":
    main()
