"""A revocation list kept on disk: which certificates (by serial or fingerprint) are cut off."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import CertificateError
from shared.pki.files import PRIVATE, make_private_dir, write_atomic
from shared.pki.fingerprint import normalise_fingerprint

REVOCATIONS_FILE = "revocations.json"


@dataclass(frozen=True)
class RevokedCertificate:
    """One revoked certificate; a CRL names serials only, so its entries carry no name."""

    name: str | None  # the certificate's common name, when known
    serial: int | None
    fingerprint: str | None  # SHA-256 hex of the certificate's DER
    reason: str  # an RFC 5280 reason (e.g. keyCompromise) or the admin's words
    revoked_at: dt.datetime

    def matches(self, *, fingerprint: str | None, serial: int | None) -> bool:
        return (fingerprint is not None and fingerprint == self.fingerprint) or (
            serial is not None and serial == self.serial
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "serial": None if self.serial is None else f"{self.serial:x}",
            "fingerprint": self.fingerprint,
            "reason": self.reason,
            "revoked_at": self.revoked_at.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RevokedCertificate:
        return cls(
            name=raw["name"],
            serial=None if raw["serial"] is None else int(raw["serial"], 16),
            fingerprint=raw["fingerprint"],
            reason=str(raw["reason"]),
            revoked_at=dt.datetime.fromisoformat(raw["revoked_at"]),
        )


class RevocationList:
    """`<directory>/revocations.json` (mode 0600), rewritten atomically on every change.

    Thread-safe: servicer threads ask `is_revoked` while an admin call revokes. Entries are
    never removed: a revoked certificate stays revoked.
    """

    def __init__(self, *, directory: Path) -> None:
        self.path = directory / REVOCATIONS_FILE
        self._lock = threading.Lock()
        self._entries: list[RevokedCertificate] = []
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = [RevokedCertificate.from_json(e) for e in raw["revoked"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise CertificateError(f"{self.path}: unreadable revocation list ({exc})") from None

    def revoke(
        self,
        *,
        name: str | None,
        fingerprint: str | None = None,
        serial: int | None = None,
        reason: str = "unspecified",
    ) -> RevokedCertificate:
        """Record a revocation (saved before returning); an already revoked one is returned as
        it was recorded."""
        if fingerprint is None and serial is None:
            raise CertificateError(f"revoking {name!r} needs its fingerprint or serial")
        entry = RevokedCertificate(
            name=name,
            serial=serial,
            fingerprint=None if fingerprint is None else normalise_fingerprint(fingerprint),
            reason=reason,
            revoked_at=dt.datetime.now(dt.timezone.utc),
        )
        with self._lock:
            known = self._find(fingerprint=entry.fingerprint, serial=serial)
            if known is not None:
                return known
            self._entries.append(entry)
            self._save()
        return entry

    def include(self, entries: Iterable[RevokedCertificate]) -> int:
        """Add entries (e.g. read from a CRL) not yet listed; return how many were new."""
        with self._lock:
            new = [
                e for e in entries if self._find(fingerprint=e.fingerprint, serial=e.serial) is None
            ]
            if new:
                self._entries.extend(new)
                self._save()
        return len(new)

    def find(
        self, *, fingerprint: str | None = None, serial: int | None = None
    ) -> RevokedCertificate | None:
        """The entry revoking the certificate with this fingerprint or serial, if any."""
        if fingerprint is not None:
            fingerprint = normalise_fingerprint(fingerprint)
        with self._lock:
            return self._find(fingerprint=fingerprint, serial=serial)

    def is_revoked(self, *, fingerprint: str | None = None, serial: int | None = None) -> bool:
        return self.find(fingerprint=fingerprint, serial=serial) is not None

    def entries(self) -> tuple[RevokedCertificate, ...]:
        with self._lock:
            return tuple(self._entries)

    def _find(self, *, fingerprint: str | None, serial: int | None) -> RevokedCertificate | None:
        return next(
            (e for e in self._entries if e.matches(fingerprint=fingerprint, serial=serial)), None
        )

    def _save(self) -> None:
        make_private_dir(self.path.parent)
        text = json.dumps({"revoked": [e.to_json() for e in self._entries]}, indent=2)
        write_atomic(self.path, (text + "\n").encode(), mode=PRIVATE)
