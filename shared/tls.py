"""Mutual-TLS credentials and the caller's identity (name and role) from its certificate."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

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


def peer_of(context: grpc.ServicerContext) -> Peer | None:
    """The verified client certificate's identity, or None when there is none."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    cert = x509.load_pem_x509_certificate(bytes(pem[0]))
    identity = identity_of(cert)
    if identity is None:
        return None
    return Peer(
        name=identity[0],
        role=identity[1],
        fingerprint=certificate_fingerprint(cert),
        public_key_fingerprint=key_fingerprint(cert.public_key()),
        serial=cert.serial_number,
    )


def require_role(context: grpc.ServicerContext, role: str) -> Peer:
    """Abort with PERMISSION_DENIED unless the caller's certificate carries `role`."""
    peer = peer_of(context)
    if peer is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "no verified client certificate")
    if peer.role != role:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"certificate {peer.name!r} has role {peer.role!r}; this service needs {role!r}",
        )
    return peer
