"""Tensor codec round trips and chunked-payload checks."""

from __future__ import annotations

import pytest
import torch

from shared.errors import PayloadError
from shared.payload import CHUNK_BYTES, PayloadBuffer, PayloadDigest, assemble, iter_chunks
from shared.tensor_codec import decode_state, encode_state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_codec_round_trip_keeps_values_and_dtype(dtype: torch.dtype) -> None:
    state = {
        "a.lora_A.weight": (torch.randn(8, 16) * 100).to(dtype),
        "b.lora_B.weight": torch.arange(12).reshape(3, 4).to(dtype),
    }
    decoded = decode_state(encode_state(state))
    assert decoded.keys() == state.keys()
    for name, tensor in state.items():
        assert decoded[name].dtype == dtype
        assert torch.equal(decoded[name], tensor)


def test_decode_rejects_garbage() -> None:
    with pytest.raises(PayloadError, match="not valid safetensors"):
        decode_state(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")


def test_large_payload_travels_in_chunks_below_grpc_limit() -> None:
    payload = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)
    chunks = list(iter_chunks(payload))
    assert len(chunks) == 3
    assert all(len(c) <= CHUNK_BYTES < 4 * 1024 * 1024 for c in chunks)
    assert assemble(PayloadDigest.of(payload), chunks, max_bytes=len(payload)) == payload


def test_truncated_payload_is_rejected() -> None:
    payload = b"x" * 1000
    with pytest.raises(PayloadError, match="truncated: received 999 of 1000"):
        assemble(PayloadDigest.of(payload), [payload[:999]], max_bytes=10_000)


def test_digest_mismatch_is_rejected() -> None:
    payload = b"y" * 1000
    tampered = b"z" + payload[1:]
    with pytest.raises(PayloadError, match="digest mismatch"):
        assemble(PayloadDigest.of(payload), [tampered], max_bytes=10_000)


def test_payload_longer_than_announced_is_rejected() -> None:
    payload = b"y" * 100
    with pytest.raises(PayloadError, match="longer than announced"):
        assemble(PayloadDigest.of(payload), [payload, b"extra"], max_bytes=10_000)


def test_oversized_announcement_is_refused_before_any_data() -> None:
    with pytest.raises(PayloadError, match="exceeds the limit"):
        PayloadBuffer(expected=PayloadDigest(total_bytes=10**12, sha256="0" * 64), max_bytes=10**9)


def test_oversized_chunk_is_rejected() -> None:
    sink = PayloadBuffer(
        expected=PayloadDigest(total_bytes=CHUNK_BYTES + 1, sha256="0" * 64),
        max_bytes=2 * CHUNK_BYTES,
    )
    with pytest.raises(PayloadError, match="chunk of"):
        sink.write(b"\0" * (CHUNK_BYTES + 1))


def test_an_empty_payload_assembles() -> None:
    assert assemble(PayloadDigest.of(b""), [], max_bytes=10) == b""
