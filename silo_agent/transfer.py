"""Moving adapters between a silo and the coordinator: the global adapter decoded from the
chunks it arrived in; an update cut from the tensors, checked and sent as one pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from shared.errors import PayloadError
from shared.payload import BLOCK_ELEMENTS, CHUNK_BYTES, PayloadCheck, PayloadDigest, receive_chunks
from shared.quantization import INT8, QuantizedEncoder
from shared.safetensors_stream import StateEncoder, decode_chunks
from shared.tensor_codec import CONTROL_PREFIX, AdapterLayout, StateDict
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

# The global adapter a silo accepts; far above any LoRA adapter, far below a full model.
MAX_ADAPTER_BYTES = 16 * 1024**3


def download_adapter(stub: pb_grpc.SiloStub, task: pb.RoundTask) -> StateDict:
    """The task's global adapter, checked against what the task announced; its tensors are
    views of the chunks it arrived in (no buffer is filled, nothing is copied)."""
    stream = stub.DownloadAdapter(pb.DownloadRequest(task_id=task.task_id))
    first = next(stream)
    if first.WhichOneof("part") != "header":
        raise PayloadError("adapter stream did not start with its header")
    announced = PayloadDigest.from_header(first.header)
    if announced != PayloadDigest.from_header(task.adapter):
        raise PayloadError("adapter header differs from the one the round task announced")
    chunks = receive_chunks(announced, (m.data for m in stream), max_bytes=MAX_ADAPTER_BYTES)
    return decode_chunks(chunks)


def in_layout_dtypes(state: StateDict, layout: AdapterLayout) -> StateDict:
    """Each tensor (and its control variate) in the dtype of the silo's own adapter tensor:
    the wire may carry fewer bits."""
    for name, tensor in state.items():
        own = layout.get(name.removeprefix(CONTROL_PREFIX))
        if own is not None:
            state[name] = tensor.to(getattr(torch, own.dtype))
    return state


UpdateEncoder = StateEncoder | QuantizedEncoder


def update_encoder(state: StateDict, wire_dtype: str) -> UpdateEncoder:
    """`state` encoded for the run's wire dtype: a float dtype, or int8 codes."""
    if wire_dtype == INT8:
        return QuantizedEncoder(state)
    return StateEncoder(state, dtype=getattr(torch, wire_dtype))


def update_messages(header: pb.UpdateHeader, encoder: UpdateEncoder) -> Iterator[pb.UpdateChunk]:
    """The header (no check announced in it), each data chunk as soon as it is cut and
    checked, then the CRC-32 in the trailer: checking overlaps the stream, and no second copy
    of the payload is ever made."""
    check = PayloadCheck()
    yield pb.UpdateChunk(header=header)
    for chunk in encoder.chunks(chunk_bytes=CHUNK_BYTES, block=BLOCK_ELEMENTS):
        check.update(chunk)
        yield pb.UpdateChunk(data=chunk)
    yield pb.UpdateChunk(trailer=pb.PayloadTrailer(crc32=check.crc32))


def upload_update(stub: pb_grpc.SiloStub, header: pb.UpdateHeader, encoder: UpdateEncoder) -> int:
    """Send what `encoder` encodes as the update that `header` describes; the payload's size."""
    header.payload.CopyFrom(pb.PayloadHeader(total_bytes=encoder.total_bytes))
    stub.UploadUpdate(update_messages(header, encoder))
    return encoder.total_bytes
