"""Facts of a certificate the coordinator keys on: fingerprints, serial and expiry."""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from shared.errors import CertificateError


def load_certificate(cert_pem: bytes, *, source: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"{source}: not a PEM certificate ({exc})") from None


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex: changes with every issuance."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_fingerprint(public_key: PublicKeyTypes) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex: survives renewal."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def fingerprint_of(cert_pem: bytes) -> str:
    """SHA-256 hex of the DER of a PEM certificate (what `openssl x509 -fingerprint -sha256`
    prints, without colons, in lowercase)."""
    return certificate_fingerprint(load_certificate(cert_pem))


def public_key_fingerprint_of(cert_pem: bytes) -> str:
    """SHA-256 hex of the certificate's public key: the same for a renewed certificate."""
    return key_fingerprint(load_certificate(cert_pem).public_key())


def serial_of(cert_pem: bytes) -> int:
    return load_certificate(cert_pem).serial_number


def not_after_of(cert_pem: bytes) -> dt.datetime:
    """When the certificate expires (timezone-aware UTC)."""
    return load_certificate(cert_pem).not_valid_after_utc


def normalise_fingerprint(fingerprint: str) -> str:
    """Lowercase hex without colons, as `fingerprint_of` writes it; refuse anything else."""
    value = fingerprint.replace(":", "").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise CertificateError(f"{fingerprint!r} is not a SHA-256 fingerprint (64 hex digits)")
    return value
