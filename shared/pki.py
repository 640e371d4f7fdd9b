"""`fedmllm-certs`: the federation's CA and its server, silo and admin certificates.

The role of each certificate is its OrganizationalUnit ("coordinator", "silo", "admin") and its
identity is its common name; the coordinator authorises every call by both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_COORDINATOR = "coordinator"
ROLE_SILO = "silo"
ROLE_ADMIN = "admin"


@dataclass(frozen=True)
class Authority:
    """A loaded CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedMLLM federation"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def create_authority(out: Path, *, days: int) -> Authority:
    """Load the CA in `out`, or create it there when absent (an existing key is never replaced)."""
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), f"{key_path}: not an EC key"
        return Authority(cert=x509.load_pem_x509_certificate(cert_path.read_bytes()), key=key)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    name = _name("FedMLLM federation CA", "ca")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return Authority(cert=cert, key=key)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def issue(
    ca: Authority, out: Path, *, common_name: str, role: str, hosts: list[str], days: int
) -> Path:
    """Issue `out/<common_name>.pem` and `.key` unless they exist; return the certificate path."""
    cert_path, key_path = out / f"{common_name}.pem", out / f"{common_name}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if role == ROLE_COORDINATOR
        else (ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, role))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    _write_key(key_path, key)
    _write_cert(cert_path, builder.sign(ca.key, hashes.SHA256()))
    return cert_path


def _is_safe_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")


def create_federation(
    out: Path, *, hosts: list[str], silos: list[str], admins: list[str], days: int = 365
) -> None:
    """Create (or complete) the CA and the coordinator's, silos' and admins' certificates."""
    for name in [*silos, *admins]:
        if not _is_safe_name(name):
            raise ValueError(f"certificate name {name!r} may hold only letters, digits, '-_.'")
    if ROLE_COORDINATOR in silos or ROLE_COORDINATOR in admins:
        raise ValueError("'coordinator' is reserved for the coordinator's own certificate")
    out.mkdir(parents=True, exist_ok=True)
    ca = create_authority(out, days=days)
    issue(ca, out, common_name=ROLE_COORDINATOR, role=ROLE_COORDINATOR, hosts=hosts, days=days)
    for silo in silos:
        issue(ca, out, common_name=silo, role=ROLE_SILO, hosts=[], days=days)
    for admin in admins:
        issue(ca, out, common_name=admin, role=ROLE_ADMIN, hosts=[], days=days)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedmllm-certs",
        description="Create the federation CA and certificates. Existing keys are kept, so the "
        "command can be rerun to add silos.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the PEM files")
    parser.add_argument(
        "--hosts",
        default="localhost,127.0.0.1",
        help="comma-separated DNS names / IPs the coordinator is reached at (its SANs)",
    )
    parser.add_argument("--silos", default="", help="comma-separated silo names (their identity)")
    parser.add_argument("--admins", default="admin", help="comma-separated admin names")
    parser.add_argument("--days", type=int, default=365, help="validity of new certificates")
    args = parser.parse_args(argv)
    try:
        create_federation(
            args.out,
            hosts=_split(args.hosts),
            silos=_split(args.silos),
            admins=_split(args.admins),
            days=args.days,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"certificates in {args.out}")
