"""Domain errors shared by both sides; the gRPC layer maps each to a status code."""

from __future__ import annotations


class FedMLLMError(Exception):
    """Base of every error this project raises on purpose."""


class PayloadError(FedMLLMError):
    """A chunked payload was truncated, oversized, out of order or failed its digest."""


class UpdateRejected(FedMLLMError):
    """A silo update failed validation; it never touches the global adapter."""

    def __init__(self, *, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class IncompatibleSilo(FedMLLMError):
    """A silo's base model or adapter layout differs from the federation's."""


class DataFormatError(FedMLLMError):
    """A silo data directory does not follow docs/silo-data.md."""


class CertificateError(FedMLLMError):
    """A certificate request, issuance, renewal, revocation list or CRL was refused."""


# Why a silo could not carry out a task, as it reports it and the coordinator counts it (a
# closed set: metric label values).
TASK_FAILURE_REASONS = ("non_finite_loss", "out_of_memory", "data", "model", "adapter", "exception")
