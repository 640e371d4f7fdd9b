"""Tensor codec round trips and chunked-payload checks."""

from __future__ import annotations

import hashlib
import zlib

import pytest
import torch

from shared.errors import PayloadError
from shared.payload import CHUNK_BYTES, PayloadCheck, PayloadDigest, iter_chunks, receive_chunks
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


def _receive(announced: PayloadDigest, chunks: list[bytes], max_bytes: int = 10_000) -> bytes:
    return b"".join(receive_chunks(announced, chunks, max_bytes=max_bytes))


def test_large_payload_travels_in_chunks_below_grpc_limit() -> None:
    payload = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)
    chunks = list(iter_chunks(payload))
    assert len(chunks) == 3
    assert all(len(c) <= CHUNK_BYTES < 4 * 1024 * 1024 for c in chunks)
    received = receive_chunks(PayloadDigest.of(payload), chunks, max_bytes=len(payload))
    assert all(a is b for a, b in zip(received, chunks, strict=True))  # kept, not copied
    assert b"".join(received) == payload


def test_the_check_is_the_crc32_that_zlib_and_gzip_compute() -> None:
    payload = bytes(range(256)) * 41
    digest = PayloadDigest.of(payload)
    check = PayloadCheck()
    for chunk in iter_chunks(payload, 1000):
        check.update(chunk)
    assert digest == PayloadDigest(check.received, crc32=check.crc32)
    assert digest.crc32 == zlib.crc32(payload) and digest.sha256 == ""
    assert PayloadDigest.from_header(digest.to_header()) == digest


def test_truncated_payload_is_rejected() -> None:
    payload = b"x" * 1000
    with pytest.raises(PayloadError, match="truncated: received 999 of 1000"):
        _receive(PayloadDigest.of(payload), [payload[:999]])


@pytest.mark.parametrize("at", [0, 500, 999])
def test_a_changed_byte_fails_the_check(at: int) -> None:
    payload = b"y" * 1000
    tampered = payload[:at] + b"z" + payload[at + 1 :]
    with pytest.raises(PayloadError, match="check failed: received CRC-32"):
        _receive(PayloadDigest.of(payload), [tampered[:300], tampered[300:]])


def test_a_sender_announcing_a_sha256_is_checked_by_it() -> None:
    payload = b"w" * 1000
    announced = PayloadDigest(len(payload), sha256=hashlib.sha256(payload).hexdigest())
    assert _receive(announced, [payload]) == payload
    with pytest.raises(PayloadError, match="check failed: received SHA-256"):
        _receive(announced, [b"v" + payload[1:]])


def test_a_payload_without_any_check_is_refused() -> None:
    with pytest.raises(PayloadError, match="announced no check"):
        _receive(PayloadDigest(3), [b"abc"])
    with pytest.raises(PayloadError, match="announced no check"):
        PayloadCheck().verify(PayloadDigest(0))


def test_payload_longer_than_announced_is_rejected() -> None:
    payload = b"y" * 100
    with pytest.raises(PayloadError, match="longer than announced"):
        _receive(PayloadDigest.of(payload), [payload, b"extra"])


def test_oversized_announcement_is_refused_before_any_data() -> None:
    def never() -> list[bytes]:
        raise AssertionError("no chunk may be read")

    with pytest.raises(PayloadError, match="exceeds the limit"):
        receive_chunks(PayloadDigest(10**12, crc32=0), iter(never, None), max_bytes=10**9)


def test_oversized_chunk_is_rejected() -> None:
    announced = PayloadDigest(CHUNK_BYTES + 1, crc32=0)
    with pytest.raises(PayloadError, match="chunk of"):
        receive_chunks(announced, [b"\0" * (CHUNK_BYTES + 1)], max_bytes=2 * CHUNK_BYTES)


def test_an_empty_payload_is_received() -> None:
    assert receive_chunks(PayloadDigest.of(b""), [], max_bytes=10) == []
