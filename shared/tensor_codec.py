"""LoRA state dicts <-> safetensors bytes, and the layout (names, shapes, dtypes) to match."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shared.errors import PayloadError

StateDict = dict[str, torch.Tensor]

# SCAFFOLD control variates travel beside the adapter in the same payload, under this prefix.
CONTROL_PREFIX = "control::"


def encode_state(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise tensors as safetensors bytes, each keeping its dtype (bf16 included)."""
    return st_save({name: t.detach().contiguous().cpu() for name, t in state.items()})


def decode_state(payload: bytes | bytearray | memoryview) -> StateDict:
    """Parse safetensors bytes into tensors of their own; a malformed payload raises
    PayloadError. (shared.safetensors_stream.decode_chunks decodes without a copy.)"""
    try:
        return st_load(payload if isinstance(payload, bytes) else bytes(payload))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise PayloadError(f"payload is not valid safetensors: {exc}") from exc


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorLayout:
    """The expected shape and dtype of one named adapter tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


AdapterLayout = dict[str, TensorLayout]


def layout_of(state: Mapping[str, torch.Tensor]) -> AdapterLayout:
    return {
        name: TensorLayout(name=name, shape=tuple(t.shape), dtype=dtype_name(t.dtype))
        for name, t in sorted(state.items())
    }


def describe_layout_difference(
    expected: AdapterLayout, actual: AdapterLayout, *, limit: int = 5
) -> list[str]:
    """Human-readable differences between two layouts, at most `limit` of them."""
    problems: list[str] = []
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
    for name in sorted(expected.keys() & actual.keys()):
        want, got = expected[name], actual[name]
        if want.shape != got.shape:
            problems.append(f"{name}: shape {list(got.shape)}, expected {list(want.shape)}")
        elif want.dtype != got.dtype:
            problems.append(f"{name}: dtype {got.dtype}, expected {want.dtype}")
        if len(problems) >= limit:
            break
    return problems[:limit]
