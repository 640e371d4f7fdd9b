"""The streaming safetensors encoder against safetensors itself, and the in-place decoder."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save

from shared.errors import PayloadError
from shared.payload import BLOCK_ELEMENTS
from shared.safetensors_stream import StateEncoder, decode_chunks
from shared.tensor_codec import CONTROL_PREFIX, decode_state

WIRE = [torch.float32, torch.bfloat16, torch.float16]


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = {"b.lora_B.weight": (5, 3), "a.lora_A.weight": (3, 70), "z.bias": (0,), "s": ()}
    state = {n: torch.randn(s, generator=generator) for n, s in shapes.items()}
    state[CONTROL_PREFIX + "a.lora_A.weight"] = torch.randn(3, 70, generator=generator)
    return state


@pytest.mark.parametrize("dtype", WIRE)
def test_the_encoding_is_byte_for_byte_what_safetensors_writes(dtype: torch.dtype) -> None:
    state = _state()
    encoder = StateEncoder(state, dtype=dtype)
    expected = save({n: t.to(dtype) for n, t in state.items()})
    assert encoder.to_bytes() == expected
    assert encoder.total_bytes == len(expected)
    assert b"".join(encoder.chunks(chunk_bytes=24, block=4)) == expected


@pytest.mark.parametrize("dtype", WIRE)
def test_chunks_end_on_block_boundaries_of_each_group(dtype: torch.dtype) -> None:
    size = torch.empty(0, dtype=dtype).element_size()
    state = {
        "a": torch.zeros(3 * BLOCK_ELEMENTS + 5),
        CONTROL_PREFIX + "a": torch.zeros(2 * BLOCK_ELEMENTS + 1),
    }
    encoder = StateEncoder(state, dtype=dtype)
    chunk_bytes = 2 * BLOCK_ELEMENTS * size + 100  # room for 2 blocks and a bit
    header, *data = encoder.chunks(chunk_bytes=chunk_bytes, block=BLOCK_ELEMENTS)
    assert header == encoder.header
    counts = [len(c) // size for c in data]
    # adapter run: 2 blocks, then 1 block + 5; control run: 2 blocks, then 1 element
    assert counts == [2 * BLOCK_ELEMENTS, BLOCK_ELEMENTS + 5, 2 * BLOCK_ELEMENTS, 1]
    assert all(len(c) <= chunk_bytes for c in data)


def test_the_encoder_never_copies_the_whole_state() -> None:
    state = {"w": torch.zeros(1_000_000)}
    encoder = StateEncoder(state, dtype=torch.float32)
    assert encoder._flat[0].data_ptr() == state["w"].data_ptr()


@pytest.mark.parametrize("dtype", [*WIRE, torch.int64, torch.bool])
def test_decode_round_trips_as_views_of_the_buffer(dtype: torch.dtype) -> None:
    state = {"x": torch.arange(12).reshape(3, 4).to(dtype), "y": torch.ones(2, dtype=dtype)}
    buffer = bytearray(save(state))
    decoded = decode_chunks([buffer])
    assert decoded.keys() == state.keys()
    for name, tensor in state.items():
        assert decoded[name].dtype == dtype
        assert torch.equal(decoded[name], tensor)
    decoded["y"].zero_()  # a view: writing it writes the buffer
    assert not torch.equal(decode_state(bytes(buffer))["y"], state["y"])


def _with_header(entries: dict[str, object], data: bytes) -> bytearray:
    raw = json.dumps(entries).encode()
    return bytearray(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    ("entries", "data", "message"),
    [
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "offsets"),
        ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "bytes for"),
        ({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype"),
        ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "beyond"),
        (
            {
                "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
            "overlap",
        ),
        ({"x": [1, 2]}, b"", "not a tensor"),
    ],
)
def test_decode_refuses_malformed_payloads(
    entries: dict[str, object], data: bytes, message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_chunks([_with_header(entries, data)])


def test_decode_refuses_a_header_longer_than_the_payload() -> None:
    with pytest.raises(PayloadError, match="header of"):
        decode_chunks([bytearray(struct.pack("<Q", 1000) + b"{}")])


@pytest.mark.parametrize("chunk_bytes", [5, 64, 1000, 4096])
@pytest.mark.parametrize("dtype", WIRE)
def test_decode_reads_tensors_from_the_chunks_they_arrived_in(
    chunk_bytes: int, dtype: torch.dtype
) -> None:
    """Any cut, even through the length prefix, the header or a value; a tensor that lies
    within one chunk is a view of it, one split across chunks is pieced together."""
    generator = torch.Generator().manual_seed(0)
    state = {f"t{i:02d}": torch.randn(i + 3, 7, generator=generator).to(dtype) for i in range(12)}
    payload = save(state)
    chunks = [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)]
    decoded = decode_chunks(chunks)
    assert decoded.keys() == state.keys()
    views = 0
    for name, tensor in state.items():
        assert decoded[name].dtype == dtype and torch.equal(decoded[name], tensor)
        ptr = decoded[name].data_ptr()
        views += any(0 <= ptr - _address(c) < len(c) for c in chunks)
    if chunk_bytes == 4096:
        assert views == len(state)  # the whole payload fits one chunk: nothing copied
    if chunk_bytes == 1000:
        assert 0 < views < len(state)


def _address(chunk: bytes) -> int:
    return int(torch.frombuffer(chunk, dtype=torch.uint8).data_ptr())
