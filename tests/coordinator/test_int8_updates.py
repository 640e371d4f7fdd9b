"""int8 updates through the real receiver: decoded to float32 in any cut and spooled as such;
scales or a map that could make a value non-finite or too large are refused, naming the tensor,
before a single code is read; and an update of the wrong kind is refused by its header."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from coordinator.aggregation import decoder as decoder_module
from coordinator.aggregation.receiver import ReceivedUpdate, UpdateReceiver, receive_bytes
from shared.errors import PayloadError, UpdateRejected
from shared.payload import CHUNK_BYTES, PayloadDigest, iter_chunks
from shared.quantization import QUANT_BLOCK, QuantizedEncoder, blocks_of, dequantize
from shared.safetensors_stream import StateEncoder
from tests.coordinator.live_uploads import LAYOUT, SHAPES, update_shape


def _state(control: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.randn(s, generator=generator) * 0.01 for k, s in SHAPES.items()}
    if control:
        state |= {f"control::{k}": torch.randn(s, generator=generator) for k, s in SHAPES.items()}
    return state


def _receive(payload: bytes, path: Path, cut: int, control: bool = False) -> ReceivedUpdate:
    with path.open("wb") as spool:
        receiver = UpdateReceiver(
            shape=update_shape("int8", control),
            announced=PayloadDigest.of(payload),
            spool=spool,
            path=path,
        )
        for chunk in iter_chunks(payload, cut):
            receiver.write(chunk)
        return receiver.finish()


@pytest.mark.parametrize("cut", [997, 65_537, CHUNK_BYTES])
@pytest.mark.parametrize("control", [False, True])
def test_codes_in_any_cut_are_spooled_as_the_float32_values_the_silo_sent(
    cut: int, control: bool, tmp_path: Path
) -> None:
    state = _state(control)
    encoder = QuantizedEncoder(state)
    payload = encoder.to_bytes()
    received = _receive(payload, tmp_path / "spool", cut, control)
    assert received.dtype == "float32" and received.nbytes == len(payload)
    spooled = torch.frombuffer(bytearray(received.path.read_bytes()), dtype=torch.float32)
    sent = torch.cat([encoder.sent(n).reshape(-1) for n in sorted(state)])
    assert torch.equal(spooled, sent)  # bit for bit
    adapter = torch.cat([encoder.sent(n).reshape(-1) for n in sorted(SHAPES)])
    assert received.norm == pytest.approx(float(adapter.double().norm()), rel=1e-6)


def test_a_chunk_is_decoded_a_piece_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What decoding holds beside a chunk is bounded by PIECE values, not by the chunk."""
    decoded: list[int] = []

    def recorded(codes: torch.Tensor, *args: object) -> torch.Tensor:
        decoded.append(codes.numel())
        return dequantize(codes, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(decoder_module, "PIECE", 1000)
    monkeypatch.setattr(decoder_module, "dequantize", recorded)
    state = _state()
    encoder = QuantizedEncoder(state)
    _receive(encoder.to_bytes(), tmp_path / "spool", 65_537)
    assert max(decoded) == 1000 and sum(decoded) == LAYOUT.numel
    spooled = torch.frombuffer(bytearray((tmp_path / "spool").read_bytes()), dtype=torch.float32)
    assert torch.equal(spooled, torch.cat([encoder.sent(n).reshape(-1) for n in sorted(state)]))


def _scales_at(payload: bytes) -> int:
    """Payload offset of the first scale (the data section's start)."""
    return 8 + struct.unpack("<Q", payload[:8])[0]


def _with_float(payload: bytes, offset: int, value: float) -> bytes:
    raw = bytearray(payload)
    raw[offset : offset + 4] = struct.pack("<f", value)
    return bytes(raw)


BLOCK = 300  # its first value is in layer.0.lora_B.weight (lora_A holds 72,008 values)
SCALE_CASES = [
    (float("nan"), "non_finite", "layer.0.lora_B.weight: NaN or Inf scale"),
    (float("inf"), "non_finite", "layer.0.lora_B.weight: NaN or Inf scale"),
    (1e7, "magnitude", r"layer.0.lora_B.weight: scale 1e\+07 outside \[0, 1e\+06\]"),
    (-1.0, "magnitude", r"layer.0.lora_B.weight: scale -1 outside \[0, 1e\+06\]"),
]


@pytest.mark.parametrize(("value", "reason", "detail"), SCALE_CASES)
def test_a_bad_scale_is_refused_naming_its_tensor_before_any_code(
    value: float, reason: str, detail: str, tmp_path: Path
) -> None:
    assert BLOCK * QUANT_BLOCK > 8 * 9001  # the block lies in lora_B
    payload = QuantizedEncoder(_state()).to_bytes()
    hostile = _with_float(payload, _scales_at(payload) + 4 * BLOCK, value)
    with pytest.raises(UpdateRejected, match=detail) as refused:
        _receive(hostile, tmp_path / "spool", 65_537)
    assert refused.value.reason == reason
    assert (tmp_path / "spool").stat().st_size == 0  # nothing decoded, nothing spooled


@pytest.mark.parametrize("value", [1.5, -1.01, float("nan"), float("inf")])
def test_a_map_that_could_scale_a_value_past_its_block_is_refused(
    value: float, tmp_path: Path
) -> None:
    payload = QuantizedEncoder(_state()).to_bytes()
    entry = _scales_at(payload) + 4 * blocks_of(LAYOUT.numel) + 4 * 17
    hostile = _with_float(payload, entry, value)
    with pytest.raises(UpdateRejected, match=r"quantization::code: values outside \[-1, 1\]"):
        _receive(hostile, tmp_path / "spool", 1 << 20)


def test_an_update_of_another_kind_is_refused_by_its_header(tmp_path: Path) -> None:
    state = _state()
    as_floats = StateEncoder(state, dtype=torch.bfloat16).to_bytes()  # too long: at once
    with pytest.raises(PayloadError, match=r"carry at most \d+ bytes \(int8 codes data"):
        _receive(as_floats, tmp_path / "floats", 1 << 20)
    header_only = StateEncoder(state, dtype=torch.bfloat16).header  # an older silo agent's
    with (tmp_path / "header").open("wb") as spool:
        receiver = UpdateReceiver(
            shape=update_shape("int8", False),
            announced=PayloadDigest(total_bytes=len(header_only) + 100, crc32=0),
            spool=spool,
            path=tmp_path / "header",
        )
        with pytest.raises(UpdateRejected, match="travel as int8 codes") as older:
            receiver.write(header_only)
    assert older.value.reason == "dtype"
    assert "upgrade the silo agent" in str(older.value)
    as_codes = QuantizedEncoder(state).to_bytes()
    with pytest.raises(
        UpdateRejected, match=r"2 unexpected tensor\(s\), e.g. quantization::absmax"
    ):
        receive_bytes(as_codes, shape=update_shape("float32", False), path=tmp_path / "codes")
    signed = as_codes.replace(b'"dtype":"U8"', b'"dtype":"I8"', 1)
    with pytest.raises(UpdateRejected, match="dtype int8, expected uint8") as refused:
        _receive(signed, tmp_path / "signed", 1 << 20)
    assert refused.value.reason == "dtype"


def test_an_announcement_larger_than_codes_can_be_is_refused_at_once(tmp_path: Path) -> None:
    shape = update_shape("int8", False)
    most = shape.wire_data_bytes + 64 * 1024 + 512 * len(SHAPES) + 8
    with (
        (tmp_path / "spool").open("wb") as spool,
        pytest.raises(PayloadError, match=rf"at most {most} bytes \(int8 codes data"),
    ):
        UpdateReceiver(
            shape=shape,
            announced=PayloadDigest(total_bytes=most + 1, crc32=0),
            spool=spool,
            path=tmp_path / "spool",
        )
