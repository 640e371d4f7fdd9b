"""The issuance registry of a PKI directory: every certificate the CA signed, and its status."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.errors import CertificateError
from shared.pki.files import PRIVATE, write_atomic
from shared.pki.fingerprint import certificate_fingerprint, key_fingerprint, load_certificate
from shared.pki.identity import identity_of

REGISTRY_FILE = "issued.json"
VALID, REVOKED = "valid", "revoked"


@dataclass(frozen=True)
class IssuedCertificate:
    """One signed certificate as the registry keeps it."""

    name: str  # common name: the identity
    role: str  # OrganizationalUnit: silo, admin or coordinator
    serial: int
    fingerprint: str  # SHA-256 of the certificate's DER
    public_key_fingerprint: str  # SHA-256 of its public key: shared by renewals
    not_after: dt.datetime
    status: str  # "valid" or "revoked"
    certificate_pem: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> IssuedCertificate:
        identity = identity_of(cert)
        if identity is None:
            raise CertificateError(f"certificate {cert.subject.rfc4514_string()} has no CN/OU")
        return cls(
            name=identity[0],
            role=identity[1],
            serial=cert.serial_number,
            fingerprint=certificate_fingerprint(cert),
            public_key_fingerprint=key_fingerprint(cert.public_key()),
            not_after=cert.not_valid_after_utc,
            status=VALID,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        )

    @property
    def certificate(self) -> x509.Certificate:
        return load_certificate(self.certificate_pem.encode(), source=f"registry entry {self.name}")

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "serial": f"{self.serial:x}",
            "not_after": self.not_after.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> IssuedCertificate:
        return cls(
            **{
                **raw,
                "serial": int(raw["serial"], 16),
                "not_after": dt.datetime.fromisoformat(raw["not_after"]),
            }
        )


class IssuanceRegistry:
    """`issued.json` (mode 0600) in the PKI directory, rewritten atomically on every change."""

    def __init__(self, *, ca_dir: Path) -> None:
        self.path = ca_dir / REGISTRY_FILE
        self._records: list[IssuedCertificate] = []
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._records = [IssuedCertificate.from_json(r) for r in raw["certificates"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise CertificateError(
                    f"{self.path}: unreadable issuance registry ({exc})"
                ) from None

    def records(self) -> tuple[IssuedCertificate, ...]:
        return tuple(self._records)

    def of_name(self, name: str) -> list[IssuedCertificate]:
        return [r for r in self._records if r.name == name]

    def latest(self, name: str) -> IssuedCertificate:
        """The certificate issued to `name` most recently."""
        issued = self.of_name(name)
        if not issued:
            raise CertificateError(f"no certificate was issued to {name!r} (see {self.path})")
        return issued[-1]

    def admit(self, *, name: str, role: str, public_key_fingerprint: str) -> None:
        """Refuse to certify `public_key_fingerprint` as `name` in `role` when that would give a
        name two roles or two live keys, give one key two names, or revive a revoked key."""
        for record in self._records:
            conflict = self._conflict(record, name, role, public_key_fingerprint)
            if conflict:
                raise CertificateError(conflict)

    def _conflict(self, record: IssuedCertificate, name: str, role: str, key: str) -> str | None:
        same_key = record.public_key_fingerprint == key
        if record.name == name and record.role != role:
            return (
                f"{name!r} is already a {record.role} certificate; a name has one role, "
                "choose another name"
            )
        if same_key and record.status == REVOKED:
            return (
                f"this key's certificate (serial {record.serial:x}, {record.name}) was revoked; "
                "a revoked key is never certified again: make a new key with fedmllm-certs request"
            )
        if same_key and record.name != name:
            return (
                f"this key is already certified as {record.name!r}; every identity needs its "
                "own key"
            )
        if record.name == name and not same_key and record.status != REVOKED:
            return (
                f"{name!r} is already issued to another key (serial {record.serial:x}); if {name} "
                "really has a new key, revoke the old one first: "
                f"fedmllm-certs revoke --ca-dir {self.path.parent} --name {name}"
            )
        return None

    def record(self, cert: x509.Certificate) -> IssuedCertificate:
        issued = IssuedCertificate.of(cert)
        self._records.append(issued)
        self._save()
        return issued

    def mark_revoked(self, name: str) -> list[IssuedCertificate]:
        """Mark every valid certificate of `name` revoked; return them as they are now."""
        revoked = [replace(r, status=REVOKED) for r in self.of_name(name) if r.status == VALID]
        by_serial = {r.serial: r for r in revoked}
        self._records = [by_serial.get(r.serial, r) for r in self._records]
        self._save()
        return revoked

    def _save(self) -> None:
        text = json.dumps({"certificates": [r.to_json() for r in self._records]}, indent=2)
        write_atomic(self.path, (text + "\n").encode(), mode=PRIVATE)
