"""Why a silo cannot train: one domain error with a reason code and a one-line detail."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from shared.errors import TASK_FAILURE_REASONS, DataFormatError, FedMLLMError, PayloadError

Reason = Literal["batching", "modality", "non_finite_loss", "out_of_memory"]


class TrainingFailed(FedMLLMError, RuntimeError):
    """Local training cannot go on; `reason` names the kind, the message says what and where.

    A RuntimeError too, so that callers which treat runtime failures of a round alike keep
    doing so.
    """

    def __init__(self, *, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


@contextmanager
def step_failures(family: str, where: str) -> Iterator[None]:
    """Re-raise a failing forward or backward pass as TrainingFailed: an allocation failure
    (CUDA or host) as 'out_of_memory', anything else the model raises as 'batching'."""
    try:
        yield
    except TrainingFailed:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        if _is_out_of_memory(exc):
            raise TrainingFailed(
                reason="out_of_memory",
                detail=f"{where}: {first_line} (lower the batch size or use --quantize 4bit)",
            ) from exc
        raise TrainingFailed(
            reason="batching",
            detail=f"{where}: {family} fails on this batch ({type(exc).__name__}: {first_line})",
        ) from exc


def failure_reason(exc: BaseException) -> str:
    """The wire's name for why a task could not be carried out."""
    declared = getattr(exc, "reason", None)
    if isinstance(declared, str) and declared in TASK_FAILURE_REASONS:
        return declared
    if isinstance(exc, FloatingPointError):
        return "non_finite_loss"
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return "out_of_memory"
    if isinstance(exc, DataFormatError):
        return "data"
    if isinstance(exc, PayloadError):
        return "adapter"
    return "exception"
