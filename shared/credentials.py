"""Local checks of a party's TLS files before any connection: present, readable, PEM, the key
belongs to the certificate, the CA issued it, it is valid now and has the expected role."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shared.cli import config_error
from shared.pki.fingerprint import key_fingerprint
from shared.pki.identity import identity_of
from shared.tls import TlsFiles

DEPLOY_KEYS = "docs/deploy.md §5"


@dataclass(frozen=True)
class Identity:
    """Who the certificate says this party is."""

    name: str  # the common name: a silo's or admin's identity in the federation
    role: str  # silo, admin or coordinator
    not_after: dt.datetime


def _read(path: Path, flag: str, what: str) -> bytes:
    if not path.exists():
        raise config_error(f"{what} {path} not found: pass {flag} PATH (the file from your bundle)")
    if not path.is_file():
        raise config_error(f"{what} {path} is not a file: pass {flag} with the PEM file")
    try:
        return path.read_bytes()
    except PermissionError:
        raise config_error(
            f"cannot read {what} {path} (permission denied): give this user read access, e.g. "
            f"chgrp fedmllm {path} && chmod 0640 {path} ({DEPLOY_KEYS})"
        ) from None
    except OSError as exc:
        raise config_error(f"cannot read {what} {path}: {exc.strerror}") from None


def _certificate(path: Path, flag: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, flag, what))
    except ValueError:
        raise config_error(
            f"{what} {path} is not a PEM certificate: pass {flag} with the .pem file "
            "fedmllm-certs wrote"
        ) from None


def _key_fingerprint(path: Path) -> str:
    data = _read(path, "--key", "private key")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise config_error(
            f"private key {path} is protected by a passphrase; the commands need the unencrypted "
            "key that fedmllm-certs request writes (mode 0600)"
        ) from None
    except ValueError:
        raise config_error(
            f"private key {path} is not a PEM private key: pass --key with NAME.key"
        ) from None
    return key_fingerprint(key.public_key())


def _check_issuer(cert: x509.Certificate, ca: x509.Certificate, files: TlsFiles) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise config_error(
            f"certificate {files.cert} was not issued by the CA in {files.ca} (it names "
            f"{cert.issuer.rfc4514_string()!r} as issuer): use the ca.pem of the federation "
            "that signed it, from the same bundle"
        ) from None


def check_credentials(files: TlsFiles, *, role: str) -> Identity:
    """The identity of `files`, or a CliError (exit 4) naming the file, the problem and the fix."""
    cert = _certificate(files.cert, "--cert", "certificate")
    ca = _certificate(files.ca, "--ca", "CA certificate")
    owned = key_fingerprint(cert.public_key())
    if _key_fingerprint(files.key) != owned:
        raise config_error(
            f"private key {files.key} does not belong to certificate {files.cert} (its public "
            f"key is {owned[:16]}...): pass the key made with the request that certificate "
            "answers, or have a certificate signed for this key (fedmllm-certs request, sign)"
        )
    _check_issuer(cert, ca, files)
    _check_validity(cert, files.cert)
    found = identity_of(cert)
    if found is None:
        raise config_error(
            f"certificate {files.cert} names no federation identity (common name and role): "
            "use a certificate from fedmllm-certs"
        )
    if found[1] != role:
        raise config_error(
            f"certificate {files.cert} is the {found[1]} certificate of {found[0]!r}; this "
            f"command needs a {role} certificate (fedmllm-certs sign --role {role})"
        )
    return Identity(name=found[0], role=found[1], not_after=cert.not_valid_after_utc)


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise config_error(
            f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: ask the "
            "federation's admin to renew it (fedmllm-certs renew --name NAME)"
        )
    if now < cert.not_valid_before_utc:
        raise config_error(
            f"certificate {path} is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC: check this host's clock"
        )
