"""The federation's certificates: CA, CSR flow, renewal, revocation (`fedmllm-certs`)."""

from shared.pki.central import create_federation
from shared.pki.cli import main
from shared.pki.identity import ROLE_ADMIN, ROLE_COORDINATOR, ROLE_SILO

__all__ = ["ROLE_ADMIN", "ROLE_COORDINATOR", "ROLE_SILO", "create_federation", "main"]
