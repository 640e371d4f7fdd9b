"""Who a certificate names: its common name (the identity) and OrganizationalUnit (the role)."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from shared.errors import CertificateError

ROLE_COORDINATOR = "coordinator"
ROLE_SILO = "silo"
ROLE_ADMIN = "admin"
CLIENT_ROLES = (ROLE_SILO, ROLE_ADMIN)
# `ca` and `coordinator` name the federation's own files (ca.pem, coordinator.pem).
RESERVED_NAMES = frozenset({"ca", ROLE_COORDINATOR})
ORGANIZATION = "FedMLLM federation"


def subject_name(common_name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None


def common_name_of(name: x509.Name) -> str | None:
    """The one common name of `name`, or None when it has none or several."""
    return _single(name, NameOID.COMMON_NAME)


def identity_of(cert: x509.Certificate) -> tuple[str, str] | None:
    """(common name, role) of a federation certificate, or None when either is missing."""
    common = _single(cert.subject, NameOID.COMMON_NAME)
    role = _single(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    return None if common is None or role is None else (common, role)


def check_client_name(name: str) -> None:
    """Refuse a silo or admin name that is unsafe as a file name or reserved."""
    safe = all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not name or not safe or len(name) > 64:
        raise CertificateError(
            f"certificate name {name!r} may hold only letters, digits and '-_.' (at most 64, "
            "not starting with '.'); choose another name"
        )
    if name in RESERVED_NAMES:
        raise CertificateError(
            f"certificate name {name!r} is reserved for the federation's own certificates; "
            "choose another name"
        )
