"""Certificate signing requests: made where the key lives, checked where the CA lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from shared.errors import CertificateError
from shared.pki.files import (
    PUBLIC,
    load_private_key,
    make_private_dir,
    write_atomic,
    write_private_key,
)
from shared.pki.fingerprint import key_fingerprint
from shared.pki.identity import check_client_name, common_name_of

_CURVES = (ec.SECP256R1, ec.SECP384R1)


@dataclass(frozen=True)
class RequestFiles:
    """What `fedmllm-certs request` left in its directory."""

    key: Path  # the private key, mode 0600; it never leaves this directory
    csr: Path  # the request to send to the federation's admin
    public_key_fingerprint: str  # to compare with what the admin reads out when signing
    new_key: bool  # False when an existing key was reused


def create_request(*, name: str, out: Path) -> RequestFiles:
    """Make `out/<name>.key` (EC P-256, 0600) unless it exists, and `out/<name>.csr` for it."""
    check_client_name(name)
    make_private_dir(out)
    key_path, csr_path = out / f"{name}.key", out / f"{name}.csr"
    new_key = not key_path.exists()
    if new_key:
        write_private_key(key_path, ec.generate_private_key(ec.SECP256R1()))
    key = load_private_key(key_path)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    write_atomic(csr_path, csr.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
    return RequestFiles(
        key=key_path,
        csr=csr_path,
        public_key_fingerprint=key_fingerprint(key.public_key()),
        new_key=new_key,
    )


@dataclass(frozen=True)
class SigningRequest:
    """A verified request: the name asked for and the key to certify."""

    name: str
    public_key: CertificatePublicKeyTypes
    public_key_fingerprint: str


def _check_key(path: Path, key: CertificatePublicKeyTypes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return
    raise CertificateError(
        f"{path}: the key must be EC P-256/P-384 or RSA of at least 2048 bits; "
        "make the request with fedmllm-certs request"
    )


def load_request(path: Path) -> SigningRequest:
    """Read `path`, verify its self-signature and check the name it asks for."""
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path}: not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise CertificateError(
            f"{path}: the request's signature is invalid (altered in transit?); ask for a fresh one"
        )
    name = common_name_of(csr.subject)
    if name is None:
        raise CertificateError(f"{path}: the request must name exactly one common name")
    try:
        check_client_name(name)
    except CertificateError as exc:
        raise CertificateError(f"{path}: {exc}") from None
    key = csr.public_key()
    _check_key(path, key)
    return SigningRequest(name=name, public_key=key, public_key_fingerprint=key_fingerprint(key))
