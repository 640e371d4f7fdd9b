"""A protocol-level silo for tests: speaks the wire contract directly, so that tests can send
exactly the (malformed) streams they need. Everything it talks to is real: gRPC, TLS, coordinator.
"""

from __future__ import annotations

import errno
import queue
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from bench.protocol_silo import join_request
from coordinator.aggregation import native
from coordinator.aggregation.spool import SpoolView
from coordinator.registry import SiloRegistry
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator
from shared.grpc_options import CHANNEL_OPTIONS
from shared.payload import PayloadDigest, iter_chunks, receive_chunks
from shared.silo_data import read_split
from shared.tensor_codec import StateDict, decode_state, encode_state
from shared.tls import TlsFiles, channel_credentials
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.client import Backoff, SiloAgent
from silo_agent.model import load_silo_model


def channel(port: int, files: TlsFiles) -> grpc.Channel:
    return grpc.secure_channel(
        f"localhost:{port}", channel_credentials(files), options=CHANNEL_OPTIONS
    )


def refused(call: object) -> grpc.RpcError:
    """The error a call that must be refused raises."""
    with pytest.raises(grpc.RpcError) as error:
        call()  # type: ignore[operator]
    return error.value


def admin_stub(running: RunningCoordinator, certs: Path) -> pb_grpc.AdminStub:
    return pb_grpc.AdminStub(channel(running.port, TlsFiles.in_directory(certs, "admin")))


def refusals(running: RunningCoordinator, method: str, code: str) -> float:
    """How many calls of `method` the coordinator refused with `code` (its metrics)."""
    value = running.federation.metrics.registry.get_sample_value(
        "fedmllm_refused_calls_total", {"method": method, "code": code}
    )
    return float(value or 0.0)


def update_stream(
    task_id: str,
    payload: bytes,
    *,
    num_samples: int = 10,
    loss: float = 1.0,
    steps: int = 1,
    gamma: float = 0.0,
    announced: PayloadDigest | None = None,
    chunks: list[bytes] | None = None,
) -> Iterator[pb.UpdateChunk]:
    digest = announced or PayloadDigest.of(payload)
    yield pb.UpdateChunk(
        header=pb.UpdateHeader(
            task_id=task_id,
            num_samples=num_samples,
            mean_loss=loss,
            steps=steps,
            gamma=gamma,
            payload=digest.to_header(),
        )
    )
    for chunk in chunks if chunks is not None else iter_chunks(payload):
        yield pb.UpdateChunk(data=chunk)


def download(stub: pb_grpc.SiloStub, task: pb.RoundTask) -> StateDict:
    """A task's global adapter, checked against its CRC-32."""
    stream = stub.DownloadAdapter(pb.DownloadRequest(task_id=task.task_id))
    header = next(stream).header
    chunks = receive_chunks(
        PayloadDigest.from_header(header), (m.data for m in stream), max_bytes=1 << 30
    )
    return decode_state(b"".join(chunks))


HEARTBEAT_S = 0.5  # a protocol silo's; the tests' coordinators drop a silo silent for 4 s
_JOIN_REQUESTS: dict[tuple[Path, bytes, int], pb.JoinRequest] = {}


def cached_join_request(model_dir: Path, num_samples: int) -> pb.JoinRequest:
    """join_request, built once per base model config: for a large model it takes seconds on a
    slow machine, and silos of one test that join seconds apart lose the first ones' liveness."""
    try:
        key = (model_dir.resolve(), (model_dir / "config.json").read_bytes(), num_samples)
    except OSError:  # not a model directory: let join_request say so
        return join_request(model_dir, num_samples=num_samples)
    if key not in _JOIN_REQUESTS:
        _JOIN_REQUESTS[key] = join_request(model_dir, num_samples=num_samples)
    request = pb.JoinRequest()
    request.CopyFrom(_JOIN_REQUESTS[key])
    return request


class ProtocolSilo:
    """Joins, holds a task stream open and hands received tasks to the test. Like a silo agent
    it heartbeats (with no state) until closed: a silo of a test that waits seconds for its
    round is not dropped as gone."""

    def __init__(
        self,
        port: int,
        files: TlsFiles,
        model_dir: Path,
        num_samples: int = 10,
        *,
        request: pb.JoinRequest | None = None,
    ):
        self.channel = channel(port, files)
        self.stub = pb_grpc.SiloStub(self.channel)
        join = request or cached_join_request(model_dir, num_samples)
        self.joined = self.stub.Join(join, timeout=10)
        self.tasks: queue.Queue[pb.RoundTask] = queue.Queue()
        self.stream_error: grpc.RpcError | None = None
        self._closed = threading.Event()
        self._stream = self.stub.ReceiveTasks(
            pb.TaskStreamRequest(session_id=self.joined.session_id)
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._heartbeat, args=(HEARTBEAT_S,), daemon=True).start()

    def _read(self) -> None:
        try:
            for task in self._stream:
                self.tasks.put(task)
        except grpc.RpcError as exc:
            self.stream_error = exc

    def _heartbeat(self, interval_s: float) -> None:
        beat = pb.HeartbeatRequest(session_id=self.joined.session_id)
        while not self._closed.wait(interval_s):
            try:
                if not self.stub.Heartbeat(beat, timeout=5).session_known:
                    return
            except (grpc.RpcError, ValueError):  # refused, server gone or channel closed
                return

    def next_task(self, timeout: float = 20.0) -> pb.RoundTask:
        return self.tasks.get(timeout=timeout)

    def download(self, task: pb.RoundTask) -> StateDict:
        return download(self.stub, task)

    def upload(self, task: pb.RoundTask, delta: StateDict, **kwargs: object) -> object:
        payload = wire_payload(task, delta)
        return self.stub.UploadUpdate(update_stream(task.task_id, payload, **kwargs))  # type: ignore[arg-type]

    def close(self) -> None:
        self._closed.set()
        self._stream.cancel()
        self.channel.close()


def wire_payload(task: pb.RoundTask, delta: StateDict) -> bytes:
    """`delta` encoded in the run's wire dtype, as a silo agent sends it."""
    wire = getattr(torch, task.training.wire_dtype or "float32")
    return encode_state({name: t.to(wire) for name, t in delta.items()})


def constant_delta(layout_source: StateDict, value: float) -> StateDict:
    return {k: torch.full_like(v, value) for k, v in layout_source.items()}


def local_agent(
    port: int,
    files: TlsFiles,
    model: Path,
    *,
    train: Path | None,
    test: Path | None = None,
) -> SiloAgent:
    """A real silo agent (CPU, quick reconnects) on a data directory's splits, to run in a
    thread of the test."""
    return SiloAgent(
        coordinator=f"localhost:{port}",
        tls=files,
        silo=load_silo_model(model, device="cpu"),
        samples=read_split(train) if train is not None else [],
        test_samples=read_split(test, "test") if test is not None else [],
        backoff=Backoff(0.2, 1.0),
    )


@contextmanager
def agents_running(
    agents: list[SiloAgent], registry: SiloRegistry, timeout: float = 60.0
) -> Iterator[None]:
    """Real silo agents in threads of this process, until every one holds a task stream."""
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    while len(registry.connected()) < len(agents):
        if time.monotonic() > deadline:
            raise TimeoutError("the silo agents did not all connect")
        time.sleep(0.05)
    try:
        yield
    finally:
        for agent in agents:
            agent.stop()
        for thread in threads:
            thread.join(10)


def run_to_end(admin: pb_grpc.AdminStub, spec: RunSpec, timeout: float = 180.0) -> pb.RunStatus:
    """Start a run and wait until it is no longer running."""
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: pb.RunStatus = admin.GetStatus(pb.StatusRequest())
        if status.state != pb.RUN_STATE_RUNNING:
            return status
        time.sleep(0.1)
    raise TimeoutError("the run did not finish")


def small_run(**changes: object) -> RunSpec:
    """The short run the end-to-end tests use: 2 rounds of 2 silos, lr 0.01, with `changes`."""
    base = RunSpec(
        rounds=2,
        silos_per_round=2,
        min_silos=2,
        round_deadline_s=60,
        learning_rate=1e-2,
        batch_size=4,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return str(response.read().decode())


def metrics_over_tls_only(port: int, scraper: TlsFiles) -> str:
    """/metrics on `port` as served over TLS to `scraper` (a federation certificate), after
    checking that a scraper without a certificate, and plain HTTP, get nothing."""
    url = f"https://localhost:{port}/metrics"
    trusted = ssl.create_default_context(cafile=str(scraper.ca))
    with pytest.raises((ssl.SSLError, OSError)):  # no client certificate
        scrape(url, trusted)
    with pytest.raises(OSError):
        scrape(f"http://localhost:{port}/metrics")
    trusted.load_cert_chain(str(scraper.cert), str(scraper.key))
    return scrape(url, trusted)


def failing_spool_reads(patch: pytest.MonkeyPatch, fails: Callable[[list[int]], bool]) -> list[int]:
    """Make reads of spooled updates fail as a failing disk would (which cannot be produced
    here), whichever way this machine reads them (the native loop, or a mapping): each
    read's first element is recorded, and the read raises EIO where `fails(reads)` says so.
    Returns the record."""
    reads: list[int] = []
    mapped, read, fused = SpoolView.values, native.add_read, native.add_measured_chunk

    def check(start: int) -> None:
        reads.append(start)
        if fails(reads):
            raise OSError(errno.EIO, "Input/output error")

    def failing_mapped(self: SpoolView, start: int, count: int) -> torch.Tensor:
        check(start)
        return mapped(self, start, count)

    def failing_read(total: torch.Tensor, spools: Any, element: int, *args: Any, **kw: Any) -> bool:
        check(element)
        return read(total, spools, element, *args, **kw)

    def failing_fused(*args: Any, spools: Any = (), element: int = 0, **kwargs: Any) -> bool:
        if spools:  # (a chunk alone reads no spool)
            check(element)
        return fused(*args, spools=spools, element=element, **kwargs)

    patch.setattr(SpoolView, "values", failing_mapped)
    patch.setattr(native, "add_read", failing_read)
    patch.setattr(native, "add_measured_chunk", failing_fused)
    return reads
