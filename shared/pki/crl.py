"""Signed certificate revocation lists (RFC 5280) for verifiers other than the coordinator."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import CertificateError
from shared.pki.authority import Authority
from shared.pki.files import PUBLIC, write_atomic
from shared.pki.fingerprint import load_certificate
from shared.pki.revocation import RevokedCertificate

CRL_FILE = "crl.pem"
# Verifiers may refuse a CRL past its next update; the CA is offline, so give it a year and
# rewrite it at every revocation.
CRL_DAYS = 365
REASONS = tuple(
    flag.value for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl
)


def _revoked_entry(entry: RevokedCertificate, serial: int) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(entry.revoked_at)
    )
    if entry.reason in REASONS:
        builder = builder.add_extension(
            x509.CRLReason(x509.ReasonFlags(entry.reason)), critical=False
        )
    return builder.build()


def write_crl(
    path: Path, *, entries: Iterable[RevokedCertificate], ca: Authority
) -> x509.CertificateRevocationList:
    """Sign a CRL of every entry with a serial and write it to `path` (PEM, world-readable)."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=CRL_DAYS))
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for entry in entries:
        if entry.serial is not None:
            builder = builder.add_revoked_certificate(_revoked_entry(entry, entry.serial))
    crl = builder.sign(ca.key, hashes.SHA256())
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
    return crl


def load_crl(path: Path, *, ca_cert_pem: bytes) -> tuple[RevokedCertificate, ...]:
    """The entries of the PEM CRL at `path`, once its issuer and signature check out against
    the federation CA."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path}: not a readable PEM CRL ({exc})") from None
    ca = load_certificate(ca_cert_pem, source="federation CA")
    public_key = ca.public_key()
    signed_by_ca = (
        crl.issuer == ca.subject
        and isinstance(public_key, ec.EllipticCurvePublicKey)
        and crl.is_signature_valid(public_key)
    )
    if not signed_by_ca:
        raise CertificateError(
            f"{path}: this CRL is not signed by the federation CA; use the crl.pem written by "
            "fedmllm-certs revoke in the federation's PKI directory"
        )
    return tuple(_entry_of(revoked) for revoked in crl)


def _entry_of(revoked: x509.RevokedCertificate) -> RevokedCertificate:
    try:
        reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = x509.ReasonFlags.unspecified.value
    return RevokedCertificate(
        name=None,
        serial=revoked.serial_number,
        fingerprint=None,
        reason=reason,
        revoked_at=revoked.revocation_date_utc,
    )
