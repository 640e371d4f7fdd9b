"""Who each silo is for the life of the federation: its pinned key, its revocations.

A silo identity (its certificate's common name) is pinned to the public key it first joined
with, so that another CA-signed certificate for the same name but another key is refused until
the admin rotates the identity; a renewed certificate keeps its key and is accepted. Revocations
(by the admin, or read from a CRL file that other tools write) refuse a certificate on every
call, also after a restart. Both live in the coordinator's state directory, mode 0600.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.errors import CertificateError
from shared.pki import ROLE_SILO
from shared.pki.crl import load_crl
from shared.pki.files import PRIVATE, write_atomic
from shared.pki.revocation import RevocationList, RevokedCertificate
from shared.tls import Peer

log = logging.getLogger(__name__)

IDENTITIES_FILE = "identities.json"
# How often the CRL file's modification time is looked at.
CRL_CHECK_S = 1.0


@dataclass
class PinnedIdentity:
    """One silo identity as the coordinator knows it."""

    name: str
    key_fingerprint: str  # SHA-256 of the public key it is pinned to
    certificates: dict[str, int] = field(default_factory=dict)  # fingerprint -> serial seen
    not_after: float = 0.0  # expiry of the newest certificate seen (unix time)
    rotating: bool = False  # the next key presented replaces the pinned one


class IdentityBook:
    """Pins and revocations, consulted on every call (thread-safe, in memory, saved on change)."""

    def __init__(self, *, state_dir: Path, crl: Path | None = None, ca_pem: bytes = b"") -> None:
        self._path = state_dir / IDENTITIES_FILE
        self._lock = threading.Lock()
        self.revocations = RevocationList(directory=state_dir)
        self._pins: dict[str, PinnedIdentity] = {}
        if self._path.exists():
            try:
                raw = json.loads(self._path.read_text(encoding="utf-8"))
                self._pins = {p["name"]: PinnedIdentity(**p) for p in raw["identities"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise CertificateError(f"{self._path}: unreadable identity pins ({exc})") from None
        self._crl, self._ca_pem = crl, ca_pem
        self._crl_seen = (0.0, 0.0)  # (last look, mtime read)
        self._refresh_crl(force=True)

    def _refresh_crl(self, *, force: bool = False) -> None:
        """Take in a CRL file's new entries when it changed (looked at once a second)."""
        crl = self._crl
        now = time.monotonic()
        if crl is None or (not force and now - self._crl_seen[0] < CRL_CHECK_S):
            return
        try:
            mtime = crl.stat().st_mtime
        except OSError as exc:
            if force:
                raise CertificateError(f"{crl}: cannot read the CRL ({exc})") from None
            return
        self._crl_seen = (now, self._crl_seen[1])
        if mtime != self._crl_seen[1]:
            added = self.revocations.include(load_crl(crl, ca_cert_pem=self._ca_pem))
            self._crl_seen = (now, mtime)
            if added:
                log.warning("%s: %d certificate(s) newly revoked", crl, added)

    def revoked(self, peer: Peer) -> RevokedCertificate | None:
        self._refresh_crl()
        return self.revocations.find(fingerprint=peer.fingerprint, serial=peer.serial)

    def admission(self, peer: Peer) -> tuple[grpc.StatusCode, str] | None:
        """Why this certificate may not call at all (revoked, another key), or None."""
        entry = self.revoked(peer)
        if entry is not None:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {peer.name!r} (serial {peer.serial:x}) was revoked on "
                f"{entry.revoked_at:%Y-%m-%d} ({entry.reason}); the federation's admin must "
                "issue a new one",
            )
        if peer.role != ROLE_SILO:
            return None
        with self._lock:
            pin = self._pins.get(peer.name)
            if pin is None or pin.rotating or pin.key_fingerprint == peer.public_key_fingerprint:
                return None
            pinned = pin.key_fingerprint
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"silo {peer.name!r} is pinned to another key ({pinned[:16]}...) than this "
            f"certificate's ({peer.public_key_fingerprint[:16]}...); if the silo's key was "
            f"replaced, the admin runs `fedmllm-admin rotate --silo {peer.name}`",
        )

    def pin(self, peer: Peer) -> None:
        """At Join: pin a new identity (or a rotating one) to this key; note the certificate."""
        with self._lock:
            pin = self._pins.get(peer.name)
            if pin is None or pin.rotating:
                if pin is not None:
                    log.warning("silo %s rotated to key %s", peer.name, peer.public_key_fingerprint)
                pin = PinnedIdentity(name=peer.name, key_fingerprint=peer.public_key_fingerprint)
                self._pins[peer.name] = pin
            elif peer.fingerprint in pin.certificates:
                return
            pin.certificates[peer.fingerprint] = peer.serial
            pin.not_after = max(pin.not_after, peer.not_after)
            self._save()

    def _save(self) -> None:
        data = {
            "identities": [asdict(p) for p in sorted(self._pins.values(), key=lambda p: p.name)]
        }
        write_atomic(self._path, json.dumps(data, indent=1).encode(), mode=PRIVATE)

    def revoke(self, name: str, reason: str) -> list[RevokedCertificate]:
        """Revoke every certificate this identity has joined with; KeyError if it never did."""
        with self._lock:
            pin = self._pins[name]
            certificates = dict(pin.certificates)
        return [
            self.revocations.revoke(name=name, fingerprint=f, serial=s, reason=reason)
            for f, s in sorted(certificates.items())
        ]

    def rotate(self, name: str) -> None:
        """Accept the next key this identity presents; KeyError if it never joined."""
        with self._lock:
            self._pins[name].rotating = True
            self._save()

    def identity(self, name: str) -> PinnedIdentity | None:
        with self._lock:
            return self._pins.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._pins)

    def is_revoked_name(self, name: str) -> RevokedCertificate | None:
        """A revocation of the identity's newest certificate (for list-silos)."""
        with self._lock:
            pin = self._pins.get(name)
            certificates = dict(pin.certificates) if pin else {}
        found = [self.revocations.find(fingerprint=f, serial=s) for f, s in certificates.items()]
        revoked = [r for r in found if r is not None]
        return revoked[-1] if revoked and len(revoked) == len(certificates) else None


class CertificateExpiry(Collector):
    """`fedmllm_certificate_expiry_seconds{name}`: seconds until each pinned silo's newest
    certificate and the coordinator's own expire, computed at every scrape."""

    def __init__(self, *, identities: IdentityBook, own_not_after: float) -> None:
        self._identities = identities
        self._own = own_not_after

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "fedmllm_certificate_expiry_seconds",
            "Seconds until the certificate expires (negative: expired)",
            labels=["name"],
        )
        now = time.time()
        family.add_metric(["coordinator"], self._own - now)
        for name in self._identities.names():
            pin = self._identities.identity(name)
            if pin is not None and pin.not_after:
                family.add_metric([name], pin.not_after - now)
        yield family
