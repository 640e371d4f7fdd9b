"""Many silos on one coordinator: heartbeat latency, admin latency, round time, RSS and fds.

    python -m bench.load --silos 10 100 1000 [--rounds 3] [--per-round 32] [--write-docs]

For each N, a real coordinator process (mutual TLS on loopback) and N protocol-level silos in
this process (asyncio, each with its own certificate and connection) that join, hold their
task streams, heartbeat at the coordinator's interval and answer training tasks with a small
adapter. The admin starts a run of R rounds of K silos and polls its status meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.data.synthetic_data import tokenizer_corpus
from bench.demo.tiny_model import build_tiny_model
from bench.docs import replace_section
from bench.protocol_silo import ProtocolSilo, start_silos
from coordinator.run_state import RunSpec
from shared.pki import create_federation
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc


@dataclass
class LoadResult:
    silos: int
    join_s: float
    heartbeats: int
    heartbeat_failures: int
    heartbeat_p50_ms: float
    heartbeat_p99_ms: float
    heartbeat_max_ms: float
    admin_p99_ms: float
    round_s: float
    idle_rss_mib: float
    peak_rss_mib: float
    fds: int

    def row(self) -> str:
        return (
            f"| {self.silos} | {self.join_s:.1f} | {self.heartbeats} ({self.heartbeat_failures} "
            f"failed) | {self.heartbeat_p50_ms:.1f} | **{self.heartbeat_p99_ms:.1f}** | "
            f"{self.heartbeat_max_ms:.1f} | {self.admin_p99_ms:.1f} | {self.round_s:.2f} | "
            f"{self.idle_rss_mib:.0f} → {self.peak_rss_mib:.0f} | {self.fds} |"
        )


HEADER = (
    "| silos | join all (s) | heartbeats | p50 ms | p99 ms | max ms | admin p99 ms | "
    "round (s) | coordinator RSS MiB (idle → peak) | open fds |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def process_usage(pid: int) -> tuple[float, float, int]:
    """(RSS MiB, peak RSS MiB, open descriptors) of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    mib = lambda key: int(fields[key].split()[0]) / 1024  # noqa: E731
    return mib("VmRSS"), mib("VmHWM"), len(os.listdir(f"/proc/{pid}/fd"))


def start_coordinator(work: Path, certs: Path, model: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = work / "ports"
    process = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--model", str(model),
         "--checkpoint-dir", str(work / "checkpoints"), "--cert", str(certs / "coordinator.pem"),
         "--key", str(certs / "coordinator.key"), "--ca", str(certs / "ca.pem"),
         "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
         "--port-file", str(port_file), "--log-level", "WARNING"],
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the coordinator did not start")
        time.sleep(0.1)
    return process, int(port_file.read_text().split()[0])


async def _admin_run(
    stub: pb_grpc.AdminStub, spec: RunSpec, latencies: list[float]
) -> pb.RunStatus:
    await stub.StartRun(pb.StartRunRequest(spec=spec.to_proto()), timeout=60)
    while True:
        started = time.perf_counter()
        status: pb.RunStatus = await stub.GetStatus(pb.StatusRequest(), timeout=60)
        latencies.append(time.perf_counter() - started)
        if status.state != pb.RUN_STATE_RUNNING:
            return status
        await asyncio.sleep(0.5)


async def _drive(
    port: int, certs: Path, model: Path, names: list[str], spec: RunSpec, pid: int
) -> tuple[float, list[ProtocolSilo], pb.RunStatus, list[float], tuple[float, float, int]]:
    started = time.monotonic()
    silos = await start_silos(target=f"127.0.0.1:{port}", certs=certs, names=names, model_dir=model)
    join_s = time.monotonic() - started
    cert, key, ca = TlsFiles.in_directory(certs, "admin").read()
    channel = grpc.aio.secure_channel(
        f"localhost:{port}", grpc.ssl_channel_credentials(ca, key, cert)
    )
    admin_latency: list[float] = []
    try:
        await asyncio.sleep(2 * silos[0].interval)  # every silo heartbeats at least once
        status = await _admin_run(pb_grpc.AdminStub(channel), spec, admin_latency)
        await asyncio.sleep(2 * silos[0].interval)
        usage = process_usage(pid)
    finally:
        await asyncio.gather(*(s.stop() for s in silos))
        await channel.close(None)
    return join_s, silos, status, admin_latency, usage


def measure(silos: int, *, rounds: int, per_round: int, work: Path) -> LoadResult:
    names = [f"silo-{i:04d}" for i in range(silos)]
    certs = work / "pki"
    create_federation(certs, hosts=["localhost", "127.0.0.1"], silos=names, admins=["admin"])
    model = build_tiny_model(work / "model", family="idefics3", corpus=tokenizer_corpus(), seed=0)
    process, port = start_coordinator(work, certs, model)
    try:
        idle_rss, _, _ = process_usage(process.pid)
        k = min(per_round, silos)
        spec = RunSpec(rounds=rounds, silos_per_round=k, min_silos=k, round_deadline_s=120)
        join_s, fleet, status, admin, (_, peak, fds) = asyncio.run(
            _drive(port, certs, model, names, spec, process.pid)
        )
    finally:
        process.terminate()
        process.wait(30)
    if status.state != pb.RUN_STATE_COMPLETED:
        raise RuntimeError(f"the run ended {pb.RunState.Name(status.state)}: {status.message}")
    beats = [t for s in fleet for t in s.load.heartbeat_s]
    return LoadResult(
        silos=silos,
        join_s=join_s,
        heartbeats=len(beats),
        heartbeat_failures=sum(s.load.heartbeat_failures for s in fleet),
        heartbeat_p50_ms=1e3 * statistics.median(beats),
        heartbeat_p99_ms=1e3 * _percentile(beats, 0.99),
        heartbeat_max_ms=1e3 * max(beats),
        admin_p99_ms=1e3 * _percentile(admin, 0.99),
        round_s=statistics.mean(r.seconds for r in status.history),
        idle_rss_mib=idle_rss,
        peak_rss_mib=peak,
        fds=fds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the admin's run")
    parser.add_argument("--per-round", type=int, default=32, help="silos selected per round")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one connection per silo here
    rows = []
    for n in args.silos:
        with tempfile.TemporaryDirectory() as work:
            result = measure(n, rounds=args.rounds, per_round=args.per_round, work=Path(work))
        rows.append(result.row())
        print(result.row(), flush=True)
    table = "\n".join([HEADER, *rows])
    print(table)
    if args.write_docs:
        replace_section(Path("docs/benchmarks.md"), "load", table)


if __name__ == "__main__":
    main()
