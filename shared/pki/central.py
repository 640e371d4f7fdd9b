"""The one-shot central mode for demos and trials: every key is made in one directory."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import CertificateError
from shared.pki.authority import (
    CA_DAYS,
    LEAF_DAYS,
    Authority,
    check_days,
    create_authority,
    hosts_of,
    issue,
)
from shared.pki.files import (
    PUBLIC,
    load_private_key,
    make_private_dir,
    write_atomic,
    write_private_key,
)
from shared.pki.fingerprint import key_fingerprint, load_certificate
from shared.pki.identity import (
    ROLE_ADMIN,
    ROLE_COORDINATOR,
    ROLE_SILO,
    check_client_name,
    identity_of,
)
from shared.pki.registry import IssuanceRegistry


def _host_set(hosts: list[str]) -> set[str]:
    normal = set()
    for host in hosts:
        try:
            normal.add(str(ipaddress.ip_address(host)))
        except ValueError:
            normal.add(host.lower())
    return normal


def _issue_for_key(
    ca: Authority,
    out: Path,
    registry: IssuanceRegistry,
    *,
    name: str,
    role: str,
    hosts: list[str],
    days: int,
) -> None:
    """Issue `out/<name>.pem` for `out/<name>.key`, making the key when absent."""
    key_path = out / f"{name}.key"
    key = (
        load_private_key(key_path) if key_path.exists() else ec.generate_private_key(ec.SECP256R1())
    )
    if role != ROLE_COORDINATOR:
        registry.admit(
            name=name, role=role, public_key_fingerprint=key_fingerprint(key.public_key())
        )
    if not key_path.exists():
        write_private_key(key_path, key)
    cert = issue(
        ca, public_key=key.public_key(), common_name=name, role=role, hosts=hosts, days=days
    )
    write_atomic(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
    registry.record(cert)


def _existing_role(out: Path, registry: IssuanceRegistry, name: str) -> str | None:
    """The role `name` already has here: in the registry or, for older directories, its file."""
    issued = registry.of_name(name)
    if issued:
        return issued[-1].role
    cert_path = out / f"{name}.pem"
    if not cert_path.is_file():
        return None
    cert = load_certificate(cert_path.read_bytes(), source=str(cert_path))
    registry.record(cert)
    identity = identity_of(cert)
    return None if identity is None else identity[1]


def _ensure_coordinator(
    ca: Authority, out: Path, registry: IssuanceRegistry, *, hosts: list[str], days: int
) -> str | None:
    """Issue the coordinator's certificate, or re-issue it for the same key when its hosts
    changed; return a line saying so in that case."""
    cert_path = out / f"{ROLE_COORDINATOR}.pem"
    if cert_path.is_file() and (out / f"{ROLE_COORDINATOR}.key").is_file():
        _existing_role(out, registry, ROLE_COORDINATOR)  # records it if an older version made it
        previous = hosts_of(load_certificate(cert_path.read_bytes(), source=str(cert_path)))
        if _host_set(previous) == _host_set(hosts):
            return None
        _issue_for_key(
            ca, out, registry, name=ROLE_COORDINATOR, role=ROLE_COORDINATOR, hosts=hosts, days=days
        )
        return (
            f"re-issued {cert_path} for hosts {', '.join(hosts)} (was {', '.join(previous)}), "
            "same key: restart the coordinator"
        )
    _issue_for_key(
        ca, out, registry, name=ROLE_COORDINATOR, role=ROLE_COORDINATOR, hosts=hosts, days=days
    )
    return None


def create_federation(
    out: Path,
    *,
    hosts: list[str],
    silos: list[str],
    admins: list[str],
    days: int = LEAF_DAYS,
    ca_days: int = CA_DAYS,
) -> list[str]:
    """Create (or complete) the CA and the coordinator's, silos' and admins' certificates and
    keys in `out`; existing keys are kept. Return notes on what changed beyond adding."""
    check_days(days, flag="--days")
    check_days(ca_days, flag="--ca-days")
    if not hosts:
        raise CertificateError("--hosts needs the coordinator's DNS name or IP address")
    wanted = {**{name: ROLE_SILO for name in silos}, **{name: ROLE_ADMIN for name in admins}}
    for name in wanted:
        check_client_name(name)
    both = sorted(set(silos) & set(admins))
    if both:
        raise CertificateError(f"{', '.join(both)}: a name is a silo or an admin, not both")
    make_private_dir(out)
    ca = create_authority(out, days=ca_days)
    registry = IssuanceRegistry(ca_dir=out)
    for name, role in wanted.items():
        existing = _existing_role(out, registry, name)
        if existing not in (None, role):
            raise CertificateError(
                f"{name!r} is already a {existing} certificate in {out}; a name has one role"
            )
    note = _ensure_coordinator(ca, out, registry, hosts=hosts, days=days)
    for name, role in wanted.items():
        if not ((out / f"{name}.pem").is_file() and (out / f"{name}.key").is_file()):
            _issue_for_key(ca, out, registry, name=name, role=role, hosts=[], days=days)
    return [] if note is None else [note]
