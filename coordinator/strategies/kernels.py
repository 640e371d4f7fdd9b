"""Fused server-optimizer kernels over flat float32 buffers.

Each kernel reads the weights, the optimizer state and the round's running sum once and writes
the new weights and state once: at the memory-traffic floor, where a chain of in-place PyTorch
ops would sweep the buffers five to seven times. torch.compile generates the fused loops; set
FEDMLLM_COMPILE=0 to run the same functions eagerly (slower, numerically equivalent).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import torch

from coordinator.aggregation import native

log = logging.getLogger(__name__)

# What a step returns from its own pass: the sum of the new weights (non-finite if any weight
# is: the check before the model is kept) and the sum of the squares of the round's summed
# delta, in float64 (the round's update norm, for its record).
StepSums = tuple[torch.Tensor, torch.Tensor]


def hyper(*values: float) -> torch.Tensor:
    """Scalars as one small tensor: the compiled kernel then serves every round's values
    (Python floats would be baked into it and force a recompilation each round). float64,
    because inductor vectorises the loop with float64 scalars and not with float32 ones
    (measured: 96 vs 164 ms for a FedAdam step over 150M values on 2 threads)."""
    return torch.tensor(values, dtype=torch.float64)


def squares(total: torch.Tensor) -> torch.Tensor:
    """The sum of the squares of `total`, accumulated in float64: inside a compiled step, a
    reduction in the step's own loop; run eagerly (no compiler), a float64 norm, since an
    eager float64 sum of a squared temporary costs more than the rest of the step."""
    if torch.compiler.is_compiling():
        return (total * total).sum(dtype=torch.float64)
    norm: torch.Tensor = torch.linalg.vector_norm(total, dtype=torch.float64)
    return norm.square()


def adam_step(
    x: torch.Tensor, m: torch.Tensor, v: torch.Tensor, total: torch.Tensor, h: torch.Tensor
) -> StepSums:
    """h = (scale, eta, beta1, beta2, tau); the round's delta is total * scale. Every step
    returns, from the same pass, the sum of the new weights (non-finite if any weight is) and
    the sum of the squares of `total`, accumulated in float64 (a float32 sum of 150M squares
    drifts by percents; ATen's float32 norm was 1.8% low)."""
    scale, eta, beta1, beta2, tau = h[0], h[1], h[2], h[3], h[4]
    delta = total * scale
    m_new = beta1 * m + (1.0 - beta1) * delta
    v_new = beta2 * v + (1.0 - beta2) * delta * delta
    x_new = x + eta * m_new / (torch.sqrt(v_new) + tau)
    x.copy_(x_new)
    m.copy_(m_new)
    v.copy_(v_new)
    return x_new.sum(), squares(total)


def yogi_step(
    x: torch.Tensor, m: torch.Tensor, v: torch.Tensor, total: torch.Tensor, h: torch.Tensor
) -> StepSums:
    scale, eta, beta1, beta2, tau = h[0], h[1], h[2], h[3], h[4]
    delta = total * scale
    squared = delta * delta
    # v - (1 - beta2) delta^2 sign(v - delta^2), as selects: inductor vectorises torch.where
    # but not torch.sign (measured: 107 vs 250 ms over 150M values)
    step = (1.0 - beta2) * squared
    m_new = beta1 * m + (1.0 - beta1) * delta
    v_new = torch.where(v > squared, v - step, torch.where(v < squared, v + step, v))
    x_new = x + eta * m_new / (torch.sqrt(v_new) + tau)
    x.copy_(x_new)
    m.copy_(m_new)
    v.copy_(v_new)
    return x_new.sum(), squares(total)


def adagrad_step(
    x: torch.Tensor, m: torch.Tensor, v: torch.Tensor, total: torch.Tensor, h: torch.Tensor
) -> StepSums:
    scale, eta, beta1, tau = h[0], h[1], h[2], h[4]
    delta = total * scale
    m_new = beta1 * m + (1.0 - beta1) * delta
    v_new = v + delta * delta
    x_new = x + eta * m_new / (torch.sqrt(v_new) + tau)
    x.copy_(x_new)
    m.copy_(m_new)
    v.copy_(v_new)
    return x_new.sum(), squares(total)


def momentum_step(
    x: torch.Tensor, velocity: torch.Tensor, total: torch.Tensor, h: torch.Tensor
) -> StepSums:
    """h = (scale, eta, momentum)."""
    scale, eta, momentum = h[0], h[1], h[2]
    v_new = momentum * velocity + total * scale
    x_new = x + eta * v_new
    x.copy_(x_new)
    velocity.copy_(v_new)
    return x_new.sum(), squares(total)


# Elements per window of `add_summed`: a window of the weights and one of the sum (4 MiB each)
# stay in the CPU's cache between the add and the sum.
SUM_WINDOW = 1 << 20


def add_summed(x: torch.Tensor, total: torch.Tensor, alpha: float) -> StepSums:
    """x += alpha * total in place (as ATen's `add_`), returning the sum of the new weights
    and the sum of the squares of `total` (float64): in one pass by the native loop
    (native.py) where it serves, or else each window summed while it is in the cache
    (measured over 150M values: 34 against 42 ms for `add_` then `sum`, and 28 for `add_`
    alone; a compiled loop doing both took 50, as inductor splits it into two loops that each
    read both buffers), its squares by a float32 dot product (within a few parts per
    million; a float64 norm of each window took four times as long)."""
    summed = native.add_summed(x, total, alpha)
    if summed is not None:
        weights, squares = torch.tensor(summed, dtype=torch.float64)
        return weights, squares
    windows = -(-x.numel() // SUM_WINDOW)
    sums = torch.empty(windows, dtype=x.dtype)
    squares = torch.empty(windows, dtype=torch.float64)
    for i, start in enumerate(range(0, x.numel(), SUM_WINDOW)):
        window, delta = x[start : start + SUM_WINDOW], total[start : start + SUM_WINDOW]
        window.add_(delta, alpha=alpha)
        torch.sum(window, dim=0, out=sums[i])
        squares[i] = torch.dot(delta, delta)
    return sums.sum(), squares.sum()


_compiled: dict[str, Callable[..., Any]] = {}


_compiling = threading.Lock()


def fused(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """The compiled kernel (compiled once per process, for any buffer length)."""
    if os.environ.get("FEDMLLM_COMPILE", "1") == "0":
        return kernel
    name = kernel.__name__
    with _compiling:
        if name not in _compiled:
            _compiled[name] = _compile(kernel)
        return _compiled[name]


def _compile(kernel: Callable[..., Any]) -> Callable[..., Any]:
    compiled: Callable[..., Any] = torch.compile(kernel, dynamic=True, fullgraph=True)
    first = threading.Lock()
    done = False

    def run(*args: Any) -> Any:
        nonlocal done
        try:
            if done:
                return compiled(*args)
            # the first call compiles; a call made meanwhile (another upload's, the run's
            # warm-up) waits for it rather than compiling the same kernel a second time
            with first:
                result = compiled(*args)
            done = True
            return result
        except Exception as exc:  # no C++ toolchain, unsupported platform, ...
            log.warning("fused %s kernel unavailable (%s); running eagerly", kernel.__name__, exc)
            _compiled[kernel.__name__] = kernel
            return kernel(*args)

    return run
