"""Adding an update into a float32 running sum at the memory floor, whatever its wire dtype.

A float32 update is one `add_`. A bfloat16 or float16 update is widened inside one fused
loop (read 2 bytes, read and write 4): PyTorch's `add_` of a float32 tensor and a 16-bit one
is about six times slower than the same-dtype `add_` (measured: 182 vs 27 ms over 150M
values), and widening a block first costs an extra pass (39 ms).
A 16-bit update folded as it arrives is also measured in that loop (`add_measured`): the
block norms then cost no pass of their own (measured over 150M bfloat16 values in 4 MiB
chunks: 22 ms for both, against 15-24 ms for the norms and 20-25 ms for the add apart); a
float32 one in a native loop (native.py) that adds as `add_` does, and a bfloat16 one in that
loop too where it adds as these kernels do (`native_bfloat16`): 16-18 against these kernels'
24-28 ms per 150M values in fresh 4 MiB chunks (slower memory phase).
Several updates waiting in their spools are added in one pass over the sum (`add_many`), with
the same arithmetic per value and in the same order as one after another, so the same bits:
16-bit ones up to GROUP at a time in one compiled loop, float32 ones by `add_` over a window
of the sum small enough to stay in the CPU's cache between them. Where the native loops serve,
float32 and bfloat16 spools are read from their files rather than mapped and added by a native
loop instead (coordinator/aggregation/spool.py), with the same arithmetic: `add_`'s one
rounding for float32, these widening kernels' two (product, then sum) for bfloat16.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from coordinator.aggregation import native
from coordinator.strategies.kernels import fused, hyper
from shared.payload import BLOCK_ELEMENTS

log = logging.getLogger(__name__)

# 16-bit updates added per compiled loop: each count is a kernel of its own (compiled once).
GROUP = 4


def add_widened(total: torch.Tensor, values: torch.Tensor, h: torch.Tensor) -> None:
    """total += values * h[0], values widened to float32 inside the loop."""
    total.copy_(total + values.float() * h[0])


def write_widened(total: torch.Tensor, values: torch.Tensor, h: torch.Tensor) -> None:
    """total = values * h[0], values widened to float32 inside the loop."""
    total.copy_(values.float() * h[0])


def add_scaled(total: torch.Tensor, values: torch.Tensor, alpha: float, *, write: bool) -> None:
    """total += alpha * values in place, or total = alpha * values if `write` (the same
    value, bit for bit, as adding to zeros)."""
    if values.dtype == total.dtype:
        if write:
            torch.mul(values, alpha, out=total)
        else:
            total.add_(values, alpha=alpha)
    else:
        fused(write_widened if write else add_widened)(total, values, hyper(alpha))


def add_widened_measured(
    total: torch.Tensor, values: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """total += values * h[0], widened; the L2 norm of each block of BLOCK_ELEMENTS values."""
    wide = values.float()
    total.copy_(total + wide * h[0])
    blocks = wide.view(-1, BLOCK_ELEMENTS)
    return (blocks * blocks).sum(1).sqrt()


def write_widened_measured(
    total: torch.Tensor, values: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """total = values * h[0], widened; the L2 norm of each block of BLOCK_ELEMENTS values."""
    wide = values.float()
    total.copy_(wide * h[0])
    blocks = wide.view(-1, BLOCK_ELEMENTS)
    return (blocks * blocks).sum(1).sqrt()


def add_measured(
    total: torch.Tensor, values: torch.Tensor, alpha: float, *, write: bool
) -> torch.Tensor:
    """add_scaled of whole blocks of values, returning each block's norm (float32) from the
    same pass: in the native loop (native.py) float32 ones (the caller offers them only where
    it serves) and bfloat16 ones where it adds them as the compiled loop does, otherwise 16-bit
    ones in the compiled loop. The sums get the values before they are checked: a caller that
    then refuses them rebuilds the sums."""
    if values.dtype == torch.bfloat16 and native_bfloat16():
        measured = native.add_measured(total, values, alpha, write=write, size=BLOCK_ELEMENTS)
        if measured is not None:
            return measured
    if values.dtype != torch.float32:
        kernel = write_widened_measured if write else add_widened_measured
        widened: torch.Tensor = fused(kernel)(total, values, hyper(alpha))
        return widened
    norms = native.add_measured(total, values, alpha, write=write, size=BLOCK_ELEMENTS)
    if norms is None:  # ATen's two passes, the same sums
        add_scaled(total, values, alpha, write=write)
        norms = torch.linalg.vector_norm(values.view(-1, BLOCK_ELEMENTS), dim=1)
    return norms


def _widened_norms(values: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each block of BLOCK_ELEMENTS values, widened in the loop."""
    blocks = values.float().view(-1, BLOCK_ELEMENTS)
    return (blocks * blocks).sum(1).sqrt()


def widened_norms(values: torch.Tensor) -> torch.Tensor:
    """The norms of whole blocks of 16-bit values in one compiled loop (faster than the eager
    reduction, measured: 10 against 14 ms over 150M bfloat16 values in 4 MiB chunks; its
    sums may differ from the eager ones in the last bits). Where the native loop serves
    bfloat16 values (`native_bfloat16`) they are measured by it instead, as the fold's pass
    measures them (native.block_norms: the calling thread, which has just checked the chunk,
    from its last block down)."""
    if values.dtype == torch.bfloat16 and native_bfloat16():
        measured = native.block_norms(values, values.numel() // BLOCK_ELEMENTS)
        if measured is not None:
            return measured
    norms: torch.Tensor = fused(_widened_norms)(values)
    return norms


def _widened_group(count: int) -> Callable[..., None]:
    """total += values[0] * h[0] + ... in that order, each widened: per value the same
    operations as add_widened one after another."""

    def kernel(total: torch.Tensor, values: list[torch.Tensor], h: torch.Tensor) -> None:
        wide = total
        for i in range(count):
            wide = wide + values[i].float() * h[i]
        total.copy_(wide)

    kernel.__name__ = f"add_widened_{count}"
    return kernel


_checking = threading.Lock()


@functools.cache
def native_bfloat16() -> bool:
    """Whether the native loops (native.py) add and measure bfloat16 updates (folded live,
    measured on arrival, read from their spools): only where they add them as the compiled
    widening kernels do, bit for bit, on this machine (a stretch of an update that is not a
    whole block is added by those, and all of an update's stretches must leave the sums as one
    loop would). Checked once per process, at the first bfloat16 update, compiling the
    kernels then if they were not yet; otherwise these kernels serve and the spools are
    mapped."""
    with _checking:  # (two uploads' first values at once: one check after the other)
        return native.library() is not None and _native_bfloat16()


def _native_bfloat16() -> bool:
    generator = torch.Generator().manual_seed(0)
    count = 3 * BLOCK_ELEMENTS  # (whole blocks, which the measuring kernels take)
    values = (torch.randn(count, generator=generator) * 3).to(torch.bfloat16)
    start = torch.randn(count, generator=generator)
    with tempfile.TemporaryFile() as spooled:
        spooled.write(values.view(torch.int16).numpy().tobytes())
        spooled.flush()
        spool = [(spooled.fileno(), Path(str(spooled.name)))]
        for alpha in (0.37, 1 / 3, -2.5):
            for write, compiled in (
                (False, (add_widened, add_widened_measured)),
                (True, (write_widened, write_widened_measured)),
            ):
                read, live = start.clone(), start.clone()
                native.add_read(read, spool, 0, [alpha], write=write, dtype="bfloat16")
                norms = native.add_measured(live, values, alpha, write=write, size=BLOCK_ELEMENTS)
                for kernel in compiled:
                    expected = start.clone()
                    fused(kernel)(expected, values, hyper(alpha))
                    if not (torch.equal(read, expected) and torch.equal(live, expected)):
                        log.warning(
                            "bfloat16 updates are added by the compiled kernels, and their "
                            "spools mapped, not by the native loop: it adds them other than "
                            "the compiled %s on this machine",
                            kernel.__name__,
                        )
                        return False
                if norms is None or not torch.allclose(
                    norms, fused(_widened_norms)(values), rtol=1e-5, atol=0.0
                ):
                    log.warning(
                        "bfloat16 updates are measured by the compiled kernels, not by the "
                        "native loop: its block norms are wrong on this machine"
                    )
                    return False
    return True


def add_many(
    total: torch.Tensor,
    values: Sequence[torch.Tensor],
    alphas: Sequence[float],
    *,
    write: bool = False,
) -> None:
    """total += alpha * values for each in turn (add_scaled one after another, the first
    written if `write`, bit for bit), in fewer passes over `total`: keep `total` small enough
    for the CPU's cache."""
    add_scaled(total, values[0], alphas[0], write=write)
    values, alphas = values[1:], alphas[1:]
    if not values:
        return
    if values[0].dtype == total.dtype:
        for value, alpha in zip(values, alphas, strict=True):
            total.add_(value, alpha=alpha)
        return
    for start in range(0, len(values), GROUP):
        group, scales = list(values[start : start + GROUP]), alphas[start : start + GROUP]
        if len(group) == 1:
            add_scaled(total, group[0], scales[0], write=False)
        else:
            fused(_widened_group(len(group)))(total, group, hyper(*scales))
