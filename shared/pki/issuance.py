"""The admin's side of the CSR flow: sign a request, renew a certificate, revoke a name."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from shared.errors import CertificateError
from shared.pki.authority import Authority, hosts_of, issue, open_authority
from shared.pki.bundle import Bundle, coordinator_address
from shared.pki.crl import CRL_FILE, write_crl
from shared.pki.files import PUBLIC, write_atomic
from shared.pki.identity import CLIENT_ROLES
from shared.pki.registry import REVOKED, IssuanceRegistry, IssuedCertificate
from shared.pki.request import load_request
from shared.pki.revocation import RevocationList


@dataclass(frozen=True)
class Issuance:
    """Where a signing or renewal went and what to tell the admin about it."""

    record: IssuedCertificate
    bundle: Bundle
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Destination:
    """Where a new certificate goes: the bundle directory and the address written in it."""

    bundle_dir: Path | None = None  # default: <PKI>/bundles/<name>
    address: str | None = None  # default: the coordinator certificate's first SAN, port 50051


def _deliver(ca_dir: Path, ca: Authority, record: IssuedCertificate, to: Destination) -> Bundle:
    bundle = Bundle(
        directory=to.bundle_dir or ca_dir / "bundles" / record.name,
        name=record.name,
        role=record.role,
        address=coordinator_address(ca_dir, to.address),
    )
    bundle.write(cert_pem=record.certificate_pem.encode(), ca_pem=ca.cert_pem)
    central_copy = ca_dir / f"{record.name}.pem"  # the layout of the one-shot central mode
    if central_copy.exists():
        write_atomic(central_copy, record.certificate_pem.encode(), mode=PUBLIC)
    return bundle


def sign_request(
    ca_dir: Path, csr_path: Path, *, role: str, days: int, to: Destination
) -> Issuance:
    """Certify the key of the request at `csr_path` as its name in `role`."""
    if role not in CLIENT_ROLES:
        raise CertificateError(f"--role must be one of {', '.join(CLIENT_ROLES)}, not {role!r}")
    request = load_request(csr_path)
    ca = open_authority(ca_dir)
    registry = IssuanceRegistry(ca_dir=ca_dir)
    address = coordinator_address(ca_dir, to.address)  # refuse a bad address before signing
    registry.admit(
        name=request.name, role=role, public_key_fingerprint=request.public_key_fingerprint
    )
    cert = issue(
        ca, public_key=request.public_key, common_name=request.name, role=role, hosts=[], days=days
    )
    record = registry.record(cert)
    bundle = _deliver(ca_dir, ca, record, Destination(bundle_dir=to.bundle_dir, address=address))
    return Issuance(record=record, bundle=bundle, notes=())


def renew(ca_dir: Path, *, name: str, days: int, to: Destination) -> Issuance:
    """Re-issue the latest certificate of `name` for the same key, name, role and hosts."""
    ca = open_authority(ca_dir)
    registry = IssuanceRegistry(ca_dir=ca_dir)
    latest = registry.latest(name)
    if latest.status == REVOKED:
        raise CertificateError(
            f"{name}'s certificate (serial {latest.serial:x}) is revoked and is not renewed; "
            f"{name} makes a new key with fedmllm-certs request and you sign it"
        )
    old = latest.certificate
    registry.admit(
        name=name, role=latest.role, public_key_fingerprint=latest.public_key_fingerprint
    )
    cert = issue(
        ca,
        public_key=old.public_key(),
        common_name=name,
        role=latest.role,
        hosts=hosts_of(old),
        days=days,
    )
    record = registry.record(cert)
    now = dt.datetime.now(dt.timezone.utc)
    state = "expired on" if latest.not_after < now else "stays valid until"
    note = (
        f"{name}'s previous certificate (serial {latest.serial:x}) {state} "
        f"{latest.not_after:%Y-%m-%d}; the new one is for the same key"
    )
    return Issuance(record=record, bundle=_deliver(ca_dir, ca, record, to), notes=(note,))


def revoke_name(ca_dir: Path, *, name: str, reason: str) -> list[IssuedCertificate]:
    """Revoke every valid certificate of `name`: `revocations.json`, `crl.pem`, then the
    registry (so that a crash in between leaves the certificates revoked, never forgotten)."""
    ca = open_authority(ca_dir)
    registry = IssuanceRegistry(ca_dir=ca_dir)
    if not registry.of_name(name):
        raise CertificateError(f"no certificate was issued to {name!r} (see {registry.path})")
    valid = [r for r in registry.of_name(name) if r.status != REVOKED]
    if not valid:
        raise CertificateError(f"every certificate of {name!r} is already revoked")
    revocations = RevocationList(directory=ca_dir)
    for record in valid:
        revocations.revoke(
            name=name, fingerprint=record.fingerprint, serial=record.serial, reason=reason
        )
    write_crl(ca_dir / CRL_FILE, entries=revocations.entries(), ca=ca)
    return registry.mark_revoked(name)
