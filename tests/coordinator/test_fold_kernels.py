"""The kernels that add updates into the round's sums: several updates added in one pass give
the same bits as adding them one after another, whatever their wire dtype, their number, their
length and their alignment in memory."""

from __future__ import annotations

import pytest
import torch

from coordinator.aggregation.kernels import GROUP, add_many, add_scaled

LENGTH = 40_961  # not a multiple of any vector width: every loop has a tail


def _values(count: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """Values over many magnitudes, with zeros of both signs, each a view at another offset
    into its buffer (as windows of mapped spool files are)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        raw = torch.randn(LENGTH + i, generator=generator)
        raw *= torch.exp2(torch.randint(-20, 4, (LENGTH + i,), generator=generator).float())
        raw[::97] = 0.0
        raw[::89] = -0.0
        out.append(raw.to(dtype)[i:])
    return out


def _one_by_one(
    total: torch.Tensor, values: list[torch.Tensor], alphas: list[float], *, write: bool = False
) -> None:
    for i, (value, alpha) in enumerate(zip(values, alphas, strict=True)):
        add_scaled(total, value, alpha, write=write and i == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("count", [1, 2, GROUP, GROUP + 1, 2 * GROUP + 3])
@pytest.mark.parametrize("write", [False, True])
def test_many_at_once_equal_one_after_another_bit_for_bit(
    dtype: torch.dtype, count: int, write: bool
) -> None:
    values = _values(count, dtype, seed=count)
    alphas = [0.1 + 1.7 * i for i in range(count)]
    start = torch.randn(LENGTH, generator=torch.Generator().manual_seed(99))
    expected, got = start.clone(), start.clone()
    _one_by_one(expected, values, alphas, write=write)
    add_many(got, values, alphas, write=write)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # signs of zero too
    if count > 1:
        # the values are such that the order of the additions shows in the bits
        reordered = start.clone()
        _one_by_one(reordered, values[::-1], alphas[::-1])
        assert not torch.equal(reordered, expected)
