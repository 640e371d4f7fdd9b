"""A silo's transfers against a real coordinator: the adapter downloaded in the run's wire
dtype and decoded from its chunks, the update streamed with its CRC-32 in the trailer."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import grpc
import pytest
import torch

from coordinator.checkpoint import CheckpointStore
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator
from shared.payload import CHUNK_BYTES, PayloadDigest
from shared.safetensors_stream import StateEncoder
from shared.tensor_codec import TensorLayout, encode_state
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.transfer import (
    download_adapter,
    in_layout_dtypes,
    update_encoder,
    update_messages,
    upload_update,
)
from tests.conftest import tls
from tests.helpers import ProtocolSilo, channel


def _task(
    coordinator: RunningCoordinator, certs: Path, silo: ProtocolSilo, wire: str
) -> pb.RoundTask:
    admin = pb_grpc.AdminStub(channel(coordinator.port, tls(certs, "admin")))
    spec = RunSpec(rounds=1, silos_per_round=1, min_silos=1, round_deadline_s=30, wire_dtype=wire)
    admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    return silo.next_task()


def _header(task: pb.RoundTask) -> pb.UpdateHeader:
    return pb.UpdateHeader(task_id=task.task_id, num_samples=10, mean_loss=1.0, steps=1)


def _saved_round(tmp_path: Path) -> dict[str, torch.Tensor]:
    deadline = time.monotonic() + 30
    while True:
        saved = CheckpointStore(tmp_path / "checkpoints").load_latest()
        if saved is not None and saved.round == 1:
            return saved.adapter
        assert time.monotonic() < deadline, "round 1 was not saved"
        time.sleep(0.05)


@pytest.mark.parametrize("wire", ["bfloat16", "float32", "int8"])
def test_a_round_trip_in_the_wire_dtype_reaches_the_master_weights(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path, tmp_path: Path, wire: str
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    try:
        task = _task(coordinator, certs, silo, wire)
        layout_source = silo.download(task)
        layout = {n: TensorLayout(n, tuple(t.shape), "float32") for n, t in layout_source.items()}
        state = in_layout_dtypes(download_adapter(silo.stub, task), layout)
        float32_bytes = len(encode_state({n: t.float() for n, t in state.items()}))
        downloaded = {"float32": 4, "bfloat16": 2, "int8": 2}[wire]  # int8 runs: bfloat16
        assert task.adapter.total_bytes < float32_bytes * downloaded / 4 + 64 * 1024
        assert all(t.dtype == torch.float32 for t in state.values())
        g = torch.Generator().manual_seed(0)
        delta = {n: torch.randn(t.shape, generator=g) * 0.01 for n, t in state.items()}
        encoder = update_encoder(delta, wire)
        sent = upload_update(silo.stub, _header(task), encoder)
        numel = sum(t.numel() for t in delta.values())
        per_value = {"float32": 4, "bfloat16": 2, "int8": 1 + 4 / 256}[wire]
        assert numel * per_value < sent == encoder.total_bytes < numel * per_value + 64 * 1024
        saved = _saved_round(tmp_path)
        for name, start in state.items():  # start is the download, rounded to the wire
            rounding = float(start.abs().max()) * (2**-23 if wire == "float32" else 2**-8)
            moved = encoder.sent(name)  # int8: what the codes decode to, not the delta
            torch.testing.assert_close(saved[name], start + moved, atol=rounding + 1e-7, rtol=0)
            if wire == "int8":
                assert not torch.equal(moved, delta[name])
                torch.testing.assert_close(moved, delta[name], atol=0.01 * 4 * 2**-6, rtol=0.02)
    finally:
        silo.close()


def test_the_check_travels_after_the_data_and_a_wrong_one_is_refused(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    silo = ProtocolSilo(coordinator.port, tls(certs, "silo-1"), tiny_model)
    try:
        task = _task(coordinator, certs, silo, "bfloat16")
        delta = {n: torch.full_like(t, 0.5) for n, t in silo.download(task).items()}
        encoder = StateEncoder(delta, dtype=torch.bfloat16)
        header = _header(task)
        header.payload.total_bytes = encoder.total_bytes
        first, *data, last = list(update_messages(header, encoder))
        assert not PayloadDigest.from_header(first.header.payload).checked
        chunks = [m.data for m in data]
        assert b"".join(chunks) == encoder.to_bytes()
        assert all(len(c) <= CHUNK_BYTES for c in chunks)
        assert last.trailer.crc32 == zlib.crc32(encoder.to_bytes())
        last.trailer.crc32 ^= 1
        with pytest.raises(grpc.RpcError) as refused:
            silo.stub.UploadUpdate(iter([first, *data, last]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "check failed: received CRC-32" in (refused.value.details() or "")
        last.trailer.ClearField("crc32")  # a trailer without its CRC-32
        with pytest.raises(grpc.RpcError) as refused:
            silo.stub.UploadUpdate(iter([first, *data, last]))
        assert "carried no CRC-32" in (refused.value.details() or "")
        last.trailer.sha256 = "0" * 64  # as agents before the CRC-32 sent it
        with pytest.raises(grpc.RpcError) as refused:
            silo.stub.UploadUpdate(iter([first, *data, last]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "upgrade the silo agent" in (refused.value.details() or "")
    finally:
        silo.close()
