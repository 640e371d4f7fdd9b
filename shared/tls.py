"""Mutual-TLS credentials and the caller's identity (name and role) from its certificate."""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from shared.pki.fingerprint import certificate_fingerprint, key_fingerprint
from shared.pki.identity import identity_of


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one party: its certificate, its private key and the federation CA."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_directory(cls, directory: Path, name: str) -> TlsFiles:
        return cls(
            cert=directory / f"{name}.pem", key=directory / f"{name}.key", ca=directory / "ca.pem"
        )

    def read(self) -> tuple[bytes, bytes, bytes]:
        for path in (self.cert, self.key, self.ca):
            if not path.is_file():
                raise FileNotFoundError(f"TLS file not found: {path}")
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()


def add_tls_arguments(parser: argparse.ArgumentParser, *, whose: str) -> None:
    """--cert, --key and --ca, the same on every command."""
    parser.add_argument("--cert", type=Path, required=True, help=f"{whose} certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help=f"{whose} private key (PEM)")
    parser.add_argument("--ca", type=Path, required=True, help="federation CA certificate (PEM)")


def tls_files(args: argparse.Namespace) -> TlsFiles:
    return TlsFiles(cert=args.cert, key=args.key, ca=args.ca)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS only: a client without a certificate signed by the CA fails the handshake."""
    cert, key, ca = files.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


@dataclass(frozen=True)
class Peer:
    """Who is calling: the identity (common name) and role (OrganizationalUnit) of its verified
    certificate, and what pins and revokes that certificate."""

    name: str
    role: str
    fingerprint: str  # SHA-256 of the certificate's DER: one issuance
    public_key_fingerprint: str  # SHA-256 of its public key: the same after a renewal
    serial: int
    not_after: float = 0.0  # when the certificate expires (unix time)


@functools.lru_cache(maxsize=4096)
def _peer_of_pem(pem: bytes) -> Peer | None:
    cert = x509.load_pem_x509_certificate(pem)
    identity = identity_of(cert)
    if identity is None:
        return None
    return Peer(
        name=identity[0],
        role=identity[1],
        fingerprint=certificate_fingerprint(cert),
        public_key_fingerprint=key_fingerprint(cert.public_key()),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def peer_of(context: Any) -> Peer | None:
    """The verified client certificate's identity, or None when there is none (parsed once
    per certificate: a thousand silos' heartbeats do not re-parse it each time)."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    first: bytes = next(iter(pem))
    return _peer_of_pem(bytes(first))
