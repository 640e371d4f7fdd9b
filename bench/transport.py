"""A silo's download and upload through the project against a bare gRPC stream of the same bytes.

    python -m bench.transport [--sizes 10 100 600] [--repeats 5] [--write-docs]

For each size (MB of float32 adapter), a real coordinator process serves a FedAvg run of one
silo per round on a float32 wire (so the bytes are the adapter's); this process is that silo.
Each round it downloads the global adapter the way the silo agent does (checked as it arrives,
decoded from the chunks it came in) and uploads a delta of the same size (cut from the tensors
and checked as it is sent, CRC-32 in the trailer; the receipt comes once the coordinator has
checked, measured and spooled it). In the same round, while the coordinator waits, a bare
server process (bench/bare_stream.py: same mutual TLS, options and chunk size, nothing done
with the bytes) streams as many bytes each way, as they are and with a CRC-32 at both ends.
The downloads take turns at going first, and so do the bare uploads; the project's upload
comes last, since it closes the round. The first round warms up. Ratios are project time /
bare time, per round; min and median over the rounds.
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from bench import bare_stream
from bench.docs import replace_section
from bench.load import start_coordinator
from bench.protocol_silo import join_request
from bench.sized_model import sized_model
from coordinator.run_state import RunSpec
from shared.grpc_options import CHANNEL_OPTIONS
from shared.payload import BLOCK_ELEMENTS, CHUNK_BYTES
from shared.pki import create_federation
from shared.safetensors_stream import StateEncoder
from shared.tensor_codec import StateDict, TensorLayout
from shared.tls import TlsFiles, channel_credentials
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.transfer import download_adapter, in_layout_dtypes, upload_update

SILO = "silo-bench"
TASK_WAIT_S = 600  # for the next round's task, while the run is running


@dataclass(frozen=True)
class Transfer:
    """One timed transfer: wall seconds, and CPU seconds at each end."""

    wall: float
    client_cpu: float
    server_cpu: float


DOWNLOADS = ("download", "bare_download", "checked_download")
BARE_UPLOADS = ("bare_upload", "checked_upload")
Round = dict[str, Transfer]


def order(index: int) -> list[str]:
    """The transfers of round `index`, in the order they run: each download and each bare
    upload goes first in turn; the project's upload, which closes the round, always last."""
    downloads = DOWNLOADS[index % 3 :] + DOWNLOADS[: index % 3]
    uploads = BARE_UPLOADS[index % 2 :] + BARE_UPLOADS[: index % 2]
    return [*downloads, *uploads, "upload"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(action: Callable[[], object], server: int) -> Transfer:
    own, theirs = resource.getrusage(resource.RUSAGE_SELF), _cpu_seconds(server)
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    client = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
    return Transfer(wall, client, _cpu_seconds(server) - theirs)


class BenchSilo:
    """A silo holding its task stream and heartbeating, for the transfers timed here."""

    def __init__(self, *, target: str, tls: TlsFiles, join: pb.JoinRequest) -> None:
        self.channel = grpc.secure_channel(
            target, channel_credentials(tls), options=CHANNEL_OPTIONS
        )
        self.stub = pb_grpc.SiloStub(self.channel)
        joined = self.stub.Join(join, timeout=120)
        self.tasks: queue.Queue[pb.RoundTask] = queue.Queue()
        self._stream = self.stub.ReceiveTasks(pb.TaskStreamRequest(session_id=joined.session_id))
        self._over = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._beat, args=(joined,), daemon=True).start()

    def _read(self) -> None:
        try:
            for task in self._stream:
                self.tasks.put(task)
        except grpc.RpcError:
            pass

    def _beat(self, joined: pb.JoinResponse) -> None:
        beat = pb.HeartbeatRequest(session_id=joined.session_id, state="bench")
        while not self._over.wait(joined.heartbeat_interval_s):
            self.stub.Heartbeat(beat, timeout=30)

    def close(self) -> None:
        self._over.set()
        self._stream.cancel()
        self.channel.close()


def _one_round(
    silo: BenchSilo,
    bare: grpc.Channel,
    task: pb.RoundTask,
    delta: StateDict,
    pids: tuple[int, int],
    index: int,
) -> Round:
    """The downloads, then the bare uploads, then the project's (see `order`)."""
    coordinator, bare_server = pids
    layout = {n: TensorLayout(n, tuple(t.shape), "float32") for n, t in delta.items()}
    encoder = StateEncoder(delta, dtype=torch.float32)
    payload = encoder.to_bytes()
    data_chunk = max(map(len, encoder.chunks(chunk_bytes=CHUNK_BYTES, block=BLOCK_ELEMENTS)))
    header = pb.UpdateHeader(task_id=task.task_id, num_samples=10, mean_loss=1.0, steps=1)
    size = task.adapter.total_bytes
    actions: dict[str, tuple[Callable[[], object], int]] = {
        "download": (
            lambda: in_layout_dtypes(download_adapter(silo.stub, task), layout),
            coordinator,
        ),
        "bare_download": (
            lambda: bare_stream.download(bare, size, chunk_bytes=CHUNK_BYTES),
            bare_server,
        ),
        "checked_download": (
            lambda: bare_stream.download(bare, size, chunk_bytes=CHUNK_BYTES, checked=True),
            bare_server,
        ),
        "bare_upload": (
            lambda: bare_stream.upload(bare, payload, chunk_bytes=data_chunk),
            bare_server,
        ),
        "checked_upload": (
            lambda: bare_stream.upload(bare, payload, chunk_bytes=data_chunk, checked=True),
            bare_server,
        ),
        "upload": (
            lambda: upload_update(silo.stub, header, StateEncoder(delta, dtype=torch.float32)),
            coordinator,
        ),
    }
    return {kind: _timed(*actions[kind]) for kind in order(index)}


def next_task(
    tasks: queue.Queue[pb.RoundTask],
    status: Callable[[], pb.RunStatus],
    *,
    wait_s: float = TASK_WAIT_S,
    poll_s: float = 2.0,
) -> pb.RoundTask:
    """The next round's task, asking the coordinator how its run stands while none comes: a
    run that paused (its checkpoint directory full, say) or ended stops the benchmark at once
    with the coordinator's reason, rather than after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return tasks.get(timeout=poll_s)
        except queue.Empty:
            pass
        run = status()
        if run.state != pb.RUN_STATE_RUNNING:
            state = pb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
            raise SystemExit(
                f"the coordinator's run is {state}, not running: {run.message or 'no reason given'}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(
                f"no round task came in {wait_s:.0f} s while the coordinator's run was running: "
                "is the machine overloaded? (the coordinator's log says what it waits for)"
            )


def _rounds(
    silo: BenchSilo,
    bare: grpc.Channel,
    join: pb.JoinRequest,
    repeats: int,
    pids: tuple[int, int],
    status: Callable[[], pb.RunStatus],
) -> list[Round]:
    generator = torch.Generator().manual_seed(0)
    delta = {
        t.name: 0.01 * torch.randn(tuple(t.shape), generator=generator) for t in join.adapter_layout
    }
    rounds = []
    for index in range(repeats + 1):
        task = next_task(silo.tasks, status)
        timed = _one_round(silo, bare, task, delta, pids, index)
        if index:  # the first round warms up
            rounds.append(timed)
    return rounds


def _start_bare(work: Path, certs: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = work / "bare-port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bare_stream",
            "--certs",
            str(certs),
            "--port-file",
            str(port_file),
        ]
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the bare stream server did not start")
        time.sleep(0.1)
    return process, int(port_file.read_text())


def _start_run(admin: pb_grpc.AdminStub, rounds: int) -> None:
    spec = RunSpec(
        rounds=rounds,
        silos_per_round=1,
        min_silos=1,
        round_deadline_s=600,
        wire_dtype="float32",
    )
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()), timeout=60)


def measure(megabytes: int, *, repeats: int, work: Path) -> list[Round]:
    certs = work / "pki"
    create_federation(certs, hosts=["localhost", "127.0.0.1"], silos=[SILO], admins=["admin"])
    model = sized_model(work / "model", adapter_bytes=megabytes * 10**6)
    join = join_request(model)
    coordinator, port = start_coordinator(work, certs, model)
    bare_process, bare_port = _start_bare(work, certs)
    tls = TlsFiles.in_directory(certs, SILO)
    silo = BenchSilo(target=f"localhost:{port}", tls=tls, join=join)
    bare = grpc.secure_channel(
        f"localhost:{bare_port}", channel_credentials(tls), options=CHANNEL_OPTIONS
    )
    admin_tls = TlsFiles.in_directory(certs, "admin")
    admin_channel = grpc.secure_channel(f"localhost:{port}", channel_credentials(admin_tls))
    admin = pb_grpc.AdminStub(admin_channel)
    try:
        _start_run(admin, repeats + 1)
        status = lambda: admin.GetStatus(pb.StatusRequest(), timeout=60)  # noqa: E731
        pids = (coordinator.pid, bare_process.pid)
        return _rounds(silo, bare, join, repeats, pids, status)
    finally:
        silo.close()
        bare.close()
        admin_channel.close()
        for process in (coordinator, bare_process):
            process.terminate()
            process.wait(30)


def _ratio(rounds: list[Round], kind: str, baseline: str) -> str:
    ratios = [r[kind].wall / r[baseline].wall for r in rounds]
    return f"{min(ratios):.2f} / {statistics.median(ratios):.2f}"


def _median(rounds: list[Round], kind: str, what: str) -> float:
    return float(statistics.median(getattr(r[kind], what) for r in rounds))


def table(results: dict[int, list[Round]]) -> str:
    lines = [
        "| adapter | direction | bare MB/s | project / bare (min / median) | project / bare + "
        "CRC-32 (min / median) | CPU s project (silo + coordinator) | CPU s bare |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for megabytes, rounds in results.items():
        for direction in ("upload", "download"):
            bare, checked = f"bare_{direction}", f"checked_{direction}"
            speed = megabytes / _median(rounds, bare, "wall")
            cpu = [
                _median(rounds, k, w)
                for k in (direction, bare)
                for w in ("client_cpu", "server_cpu")
            ]
            lines.append(
                f"| {megabytes} MB | {direction} | {speed:.0f} | "
                f"**{_ratio(rounds, direction, bare)}** | {_ratio(rounds, direction, checked)} | "
                f"{cpu[0]:.2f} + {cpu[1]:.2f} | {cpu[2]:.2f} + {cpu[3]:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 600], help="MB")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per size")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    results = {}
    for megabytes in args.sizes:
        with tempfile.TemporaryDirectory() as work:
            results[megabytes] = measure(megabytes, repeats=args.repeats, work=Path(work))
        print(table({megabytes: results[megabytes]}).splitlines()[-1], flush=True)
    text = table(results) + f"\n\n{args.repeats} timed rounds per size, after one warm-up round."
    print(text)
    if args.write_docs:
        replace_section(Path("docs/benchmarks.md"), "transport", text)


if __name__ == "__main__":
    main()
