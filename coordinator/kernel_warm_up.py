"""Compiling a run's kernels before its first round needs them.

The 16-bit fold kernels and the server optimizers' steps are compiled (torch.compile) at
their first call (the native float32 loops are built at the coordinator's start). The first
compilation in a process takes 8-12 s here with an empty inductor cache (3 s with a warm one),
each further kernel 0.1-1 s (measured): time the run's first round would spend with its first
upload held in the fold, and again in its step. A run that starts or resumes compiles them in
a thread of its own, on a few blocks of values, while its silos download and train.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from coordinator.aggregation.kernels import (
    GROUP,
    add_many,
    add_measured,
    add_scaled,
    native_bfloat16,
    widened_norms,
)
from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from shared.payload import BLOCK_ELEMENTS

log = logging.getLogger(__name__)

# Values the kernels are compiled on: whole blocks (the measuring kernels take no fewer), and
# more than one (a size of 1 would be compiled for that size alone).
VALUES = 2 * BLOCK_ELEMENTS


def warm_up(model: GlobalModel) -> None:
    """Compile (or find compiled) every kernel a round of `model`'s run calls: its wire's fold
    and measuring kernels and its strategy's step. A kernel that does not compile is logged
    (it then runs eagerly, as at its first call)."""
    started = time.perf_counter()
    wire = model.update_shape(model.wire_dtype).dtype  # (an int8 run folds float32 values)
    try:
        if wire != "float32":
            _fold_kernels(getattr(torch, wire))
        _step(model)
    except Exception as exc:  # (each kernel's own failure is logged by `fused`)
        log.warning("kernels not compiled ahead (%s): they compile at their first call", exc)
        return
    log.info(
        "kernels for %s updates and the %s step ready in %.1f s",
        model.wire_dtype,
        model.strategy.name,
        time.perf_counter() - started,
    )


def start_warm_up(model: GlobalModel) -> threading.Thread:
    """warm_up in a daemon thread of its own."""
    thread = threading.Thread(target=warm_up, args=(model,), name="kernel-warm-up", daemon=True)
    thread.start()
    return thread


def _fold_kernels(dtype: torch.dtype) -> None:
    total, values = torch.zeros(VALUES), torch.ones(VALUES, dtype=dtype)
    for write in (False, True):
        add_measured(total, values, 0.5, write=write)
        add_scaled(total, values, 0.5, write=write)
    widened_norms(values)
    for count in range(2, GROUP + 1):  # the first is added alone, then a group of `count`
        add_many(total, [values] * (count + 1), [0.5] * (count + 1))
    if dtype == torch.bfloat16:
        native_bfloat16()


def _step(model: GlobalModel) -> None:
    """The strategy's step, on a strategy of its kind over a few blocks of its own."""
    flat = FlatLayout.of({"warm-up": torch.zeros(VALUES)})
    strategy = type(model.strategy)(layout=flat, params=model.strategy.params)
    aggregate = strategy.begin_round(population=1)
    aggregate.total.fill_(1.0)
    if aggregate.control_total is not None:
        aggregate.control_total.zero_()
    aggregate.weight_sum, aggregate.updates = 1.0, 1
    aggregate.samples, aggregate.sample_steps = 1, 1.0
    strategy.apply(flat.zeros(), aggregate)
