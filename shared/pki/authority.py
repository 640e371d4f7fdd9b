"""The federation CA: created once, loaded to sign, and the one place certificates are built."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared.errors import CertificateError
from shared.pki.files import PUBLIC, load_private_key, write_atomic, write_private_key
from shared.pki.fingerprint import load_certificate
from shared.pki.identity import ROLE_COORDINATOR, subject_name

CA_DAYS = 3650  # ten years: the CA outlives many yearly leaf renewals
LEAF_DAYS = 365
CA_CERT, CA_KEY = "ca.pem", "ca.key"
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind the CA's


@dataclass(frozen=True)
class Authority:
    """A loaded CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def check_days(days: int, *, flag: str) -> None:
    if days <= 0:
        raise CertificateError(f"{flag} must be a positive number of days, not {days}")


def open_authority(ca_dir: Path) -> Authority:
    """The CA in `ca_dir`; a clear error when it is not there."""
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    if not (cert_path.is_file() and key_path.is_file()):
        raise CertificateError(
            f"{ca_dir}: no CA here ({CA_CERT} and {CA_KEY}); create one with "
            f"`fedmllm-certs init --ca-dir {ca_dir} --hosts HOST`"
        )
    cert = load_certificate(cert_path.read_bytes(), source=str(cert_path))
    return Authority(cert=cert, key=load_private_key(key_path))


def create_authority(ca_dir: Path, *, days: int = CA_DAYS) -> Authority:
    """Load the CA in `ca_dir`, or create it there when absent (a key is never replaced)."""
    if (ca_dir / CA_CERT).exists() and (ca_dir / CA_KEY).exists():
        return open_authority(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = subject_name("FedMLLM federation CA", "ca")
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(ca_dir / CA_KEY, key)
    write_atomic(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
    return Authority(cert=cert, key=key)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def hosts_of(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of the certificate's SANs, in order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(entry.value) for entry in san if isinstance(entry, x509.DNSName | x509.IPAddress)]


def issue(
    ca: Authority,
    *,
    public_key: CertificatePublicKeyTypes,
    common_name: str,
    role: str,
    hosts: list[str],
    days: int,
) -> x509.Certificate:
    """Sign a leaf certificate for `public_key`; it never outlives the CA."""
    check_days(days, flag="--days")
    now = dt.datetime.now(dt.timezone.utc)
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if role == ROLE_COORDINATOR
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name(common_name, role))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(ca.key, hashes.SHA256())
