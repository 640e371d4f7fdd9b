"""int8 updates against bitsandbytes and safetensors themselves: the payload is what safetensors
writes for the codes, its values are what bitsandbytes' own round trip gives, and a silo never
codes NaN or Inf (bitsandbytes would turn them into finite values)."""

from __future__ import annotations

import bitsandbytes.functional as bnb
import pytest
import torch
from safetensors.torch import load, save

from shared.quantization import ABSMAX, CODE_MAP, QUANT_BLOCK, QuantizedEncoder, dequantize
from shared.tensor_codec import CONTROL_PREFIX, StateDict


def decode_quantized(state: dict[str, torch.Tensor]) -> StateDict:
    """The float32 tensors a whole int8 payload stands for, decoded tensor by tensor."""
    absmax, code_map = state.pop(ABSMAX), state.pop(CODE_MAP)
    out: StateDict = {}
    at = 0
    for name in sorted(state):
        codes = state[name].reshape(-1)
        out[name] = dequantize(codes, code_map, absmax, at).view(state[name].shape)
        at += codes.numel()
    return out


def _state() -> dict[str, torch.Tensor]:
    """Tensors that end inside blocks, 100x apart in scale (LoRA A and B), and a control."""
    generator = torch.Generator().manual_seed(0)
    return {
        "b.lora_A.weight": torch.randn(8, 301, generator=generator) * 1e-2,
        "a.lora_B.weight": torch.randn(301, 8, generator=generator) * 1e-4,
        "x.pad": torch.randn(456, generator=generator),  # ends at 7680 = 30 x 256 values
        "y.empty": torch.empty(0),  # so this empty tensor lies on a block boundary
        "z.bias": torch.randn(5, generator=generator),
        CONTROL_PREFIX + "b.lora_A.weight": torch.randn(8, 301, generator=generator),
    }


def test_the_payload_is_what_safetensors_writes_for_the_codes() -> None:
    encoder = QuantizedEncoder(_state())
    payload = encoder.to_bytes()
    tensors = load(payload)
    assert save(tensors) == payload  # the layout safetensors itself chooses
    assert tensors[CODE_MAP].dtype == torch.float32 and tensors[CODE_MAP].numel() == 256
    numel = sum(t.numel() for t in _state().values())
    assert tensors[ABSMAX].numel() == -(-numel // QUANT_BLOCK)
    assert all(tensors[n].dtype == torch.uint8 for n in _state())
    chunks = list(encoder.chunks(chunk_bytes=300, block=QUANT_BLOCK))
    assert b"".join(chunks) == payload
    assert all(len(c) <= 300 for c in chunks[1:])  # after the header
    assert encoder.total_bytes == len(payload) < numel * (1 + 4 / QUANT_BLOCK) + 2048


def test_values_are_bitsandbytes_own_round_trip_and_what_the_silo_says_it_sent() -> None:
    state = _state()
    encoder = QuantizedEncoder(state)
    decoded = decode_quantized(load(encoder.to_bytes()))
    names = sorted(state)  # data-section order: the blocks run across tensors
    flat = torch.cat([state[n].reshape(-1) for n in names])
    codes, quant_state = bnb.quantize_blockwise(flat, blocksize=QUANT_BLOCK)
    expected = bnb.dequantize_blockwise(codes, quant_state)
    assert torch.equal(torch.cat([decoded[n].reshape(-1) for n in names]), expected)
    for name in names:
        assert torch.equal(encoder.sent(name), decoded[name])
        if not state[name].numel():
            continue
        error = (decoded[name] - state[name]).norm() / state[name].norm()
        assert 0 < error < 0.03, name  # the small-scale B keeps its precision too


@pytest.mark.parametrize("first", [0, 7, 255, 256, 300])
@pytest.mark.parametrize("count", [1, 250, 513])
def test_codes_cut_anywhere_decode_as_the_whole(first: int, count: int) -> None:
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 256, (1024,), dtype=torch.uint8, generator=generator)
    code_map = bnb.create_dynamic_map(signed=True)
    absmax = torch.rand(4, generator=generator) + 0.5
    whole = dequantize(codes, code_map, absmax, 0)
    part = dequantize(codes[first : first + count], code_map, absmax, first)
    assert torch.equal(part, whole[first : first + count])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_silo_refuses_to_code_nan_or_inf_naming_the_tensor(bad: float) -> None:
    state = _state()
    state["z.bias"][3] = bad
    with pytest.raises(FloatingPointError, match=r"^z\.bias: NaN or Inf values; the update is not"):
        QuantizedEncoder(state)
