"""Moving adapters between a silo and the coordinator: the global adapter received into one
buffer and decoded in place; an update cut from the tensors, hashed and sent as one pipeline."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from shared.errors import PayloadError
from shared.payload import BLOCK_ELEMENTS, CHUNK_BYTES, PayloadDigest, assemble
from shared.safetensors_stream import StateEncoder, decode_buffer
from shared.tensor_codec import CONTROL_PREFIX, AdapterLayout, StateDict
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

# The global adapter a silo accepts; far above any LoRA adapter, far below a full model.
MAX_ADAPTER_BYTES = 16 * 1024**3


def download_adapter(stub: pb_grpc.SiloStub, task: pb.RoundTask) -> memoryview:
    """The task's global adapter payload, verified against the digest the task announced."""
    stream = stub.DownloadAdapter(pb.DownloadRequest(task_id=task.task_id))
    first = next(stream)
    if first.WhichOneof("part") != "header":
        raise PayloadError("adapter stream did not start with its header")
    announced = PayloadDigest(first.header.total_bytes, first.header.sha256)
    if announced != PayloadDigest(task.adapter.total_bytes, task.adapter.sha256):
        raise PayloadError("adapter header differs from the one the round task announced")
    return assemble(announced, (m.data for m in stream), max_bytes=MAX_ADAPTER_BYTES)


def in_layout_dtypes(payload: memoryview, layout: AdapterLayout) -> StateDict:
    """Decode a downloaded payload without copying it, each tensor (and its control variate)
    in the dtype of the silo's own adapter tensor: the wire may carry fewer bits."""
    state = decode_buffer(payload)
    for name, tensor in state.items():
        own = layout.get(name.removeprefix(CONTROL_PREFIX))
        if own is not None:
            state[name] = tensor.to(getattr(torch, own.dtype))
    return state


def update_messages(header: pb.UpdateHeader, encoder: StateEncoder) -> Iterator[pb.UpdateChunk]:
    """The header (its digest left empty), each data chunk as soon as it is cut and hashed,
    then the digest in the trailer: hashing overlaps the stream, and no second copy of the
    payload is ever made."""
    digest = hashlib.sha256()
    yield pb.UpdateChunk(header=header)
    for chunk in encoder.chunks(chunk_bytes=CHUNK_BYTES, block=BLOCK_ELEMENTS):
        digest.update(chunk)
        yield pb.UpdateChunk(data=chunk)
    yield pb.UpdateChunk(trailer=pb.PayloadTrailer(sha256=digest.hexdigest()))


def upload_update(
    stub: pb_grpc.SiloStub, header: pb.UpdateHeader, state: StateDict, *, dtype: torch.dtype
) -> int:
    """Send `state` in `dtype` as the update that `header` describes; the payload's size."""
    encoder = StateEncoder(state, dtype=dtype)
    header.payload.CopyFrom(pb.PayloadHeader(total_bytes=encoder.total_bytes))
    stub.UploadUpdate(update_messages(header, encoder))
    return encoder.total_bytes
