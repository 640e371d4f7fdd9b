"""A silo that speaks the wire contract directly, on asyncio: thousands of them fit in one
process, for load benchmarks and scale tests. Each has its own certificate and connection,
joins, holds its task stream, heartbeats and answers training tasks with a fixed delta."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from coordinator.run_schema import WIRE_DTYPES
from shared.adapter import (
    canonical_config,
    config_fingerprint,
    default_lora_config,
    initial_adapter,
    language_attention_targets,
    load_base_config,
    lora_json,
    meta_model,
)
from shared.grpc_options import CHANNEL_OPTIONS
from shared.payload import PayloadDigest, iter_chunks
from shared.quantization import INT8, QuantizedEncoder
from shared.tensor_codec import StateDict, encode_state, layout_of
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc


def join_request(model_dir: Path, *, num_samples: int = 10) -> pb.JoinRequest:
    """What an honest silo with this base model sends at Join."""
    config = load_base_config(model_dir)
    canonical = canonical_config(config)
    _, state = initial_adapter(config, seed=0)
    lora = default_lora_config(language_attention_targets(meta_model(config)))
    return pb.JoinRequest(
        agent_version="protocol-silo",
        base_model_fingerprint=config_fingerprint(canonical),
        base_model_config_json=json.dumps(canonical),
        lora_config_json=lora_json(lora),
        adapter_layout=[
            pb.TensorSpec(name=t.name, shape=list(t.shape), dtype=t.dtype)
            for t in layout_of(state).values()
        ],
        num_train_samples=num_samples,
    )


def zero_update(model_dir: Path, dtype: str = "float32") -> bytes:
    """A valid update of this base model's adapter in a wire dtype: every delta zero."""
    _, state = initial_adapter(load_base_config(model_dir), seed=0)
    if dtype == INT8:
        return QuantizedEncoder({name: torch.zeros_like(t) for name, t in state.items()}).to_bytes()
    wire = getattr(torch, dtype)
    zeros: StateDict = {name: torch.zeros_like(t, dtype=wire) for name, t in state.items()}
    return encode_state(zeros)


def zero_updates(model_dir: Path) -> dict[str, bytes]:
    """zero_update in every wire dtype a run may ask for."""
    return {dtype: zero_update(model_dir, dtype) for dtype in WIRE_DTYPES}


def _update_chunks(
    task: pb.RoundTask, payload: bytes, digest: PayloadDigest, samples: int
) -> Iterator[pb.UpdateChunk]:
    header = pb.UpdateHeader(
        task_id=task.task_id,
        num_samples=samples,
        mean_loss=1.0,
        steps=1,
        payload=digest.to_header(),
    )
    yield pb.UpdateChunk(header=header)
    for chunk in iter_chunks(payload):
        yield pb.UpdateChunk(data=chunk)


@dataclass
class SiloLoad:
    """What one protocol silo saw: heartbeat latencies and the tasks it answered."""

    heartbeat_s: list[float] = field(default_factory=list)
    heartbeat_failures: int = 0
    tasks: int = 0
    task_errors: list[str] = field(default_factory=list)


class ProtocolSilo:
    """One asyncio silo: `await start()`, then it heartbeats and answers tasks until `stop()`."""

    def __init__(
        self,
        *,
        target: str,
        tls: TlsFiles,
        join: pb.JoinRequest,
        updates: dict[str, bytes],
        digests: dict[str, PayloadDigest],  # of `updates`, computed once for the whole fleet
    ) -> None:
        cert, key, ca = tls.read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        self.channel = grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.SiloStub(self.channel)
        self._join = join
        self._updates = updates  # wire dtype -> payload
        self._digests = digests
        self.load = SiloLoad()
        self._tasks: list[asyncio.Task[None]] = []
        self.session_id = ""
        self.interval = 5.0

    async def start(self) -> None:
        joined = await self.stub.Join(self._join, timeout=60)
        self.session_id, self.interval = joined.session_id, float(joined.heartbeat_interval_s)
        stream = self.stub.ReceiveTasks(pb.TaskStreamRequest(session_id=self.session_id))
        self._tasks = [
            asyncio.create_task(self._serve(stream)),
            asyncio.create_task(self._heartbeat()),
        ]

    async def _heartbeat(self) -> None:
        request = pb.HeartbeatRequest(session_id=self.session_id, state="idle")
        while True:
            await asyncio.sleep(self.interval)
            started = time.perf_counter()
            try:
                await self.stub.Heartbeat(request, timeout=30)
                self.load.heartbeat_s.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                self.load.heartbeat_failures += 1

    async def _serve(self, stream: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        async for task in stream:
            try:
                download = self.stub.DownloadAdapter(pb.DownloadRequest(task_id=task.task_id))
                async for _ in download:
                    pass
                wire = task.training.wire_dtype or "float32"
                await self.stub.UploadUpdate(
                    _update_chunks(
                        task, self._updates[wire], self._digests[wire], self._join.num_train_samples
                    )
                )
                self.load.tasks += 1
            except grpc.aio.AioRpcError as exc:
                self.load.task_errors.append(f"{exc.code().name}: {exc.details()}")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.close(None)


async def start_silos(
    *,
    target: str,
    certs: Path,
    names: list[str],
    model_dir: Path,
    concurrency: int = 32,
) -> list[ProtocolSilo]:
    """Join every named silo (at most `concurrency` TLS handshakes at a time)."""
    join, updates = join_request(model_dir), zero_updates(model_dir)
    digests = {dtype: PayloadDigest.of(payload) for dtype, payload in updates.items()}
    gate = asyncio.Semaphore(concurrency)
    silos = [
        ProtocolSilo(
            target=target,
            tls=TlsFiles.in_directory(certs, n),
            join=join,
            updates=updates,
            digests=digests,
        )
        for n in names
    ]

    async def start(silo: ProtocolSilo) -> None:
        async with gate:
            await silo.start()

    await asyncio.gather(*(start(s) for s in silos))
    return silos
