"""`fedmllm-certs renew`: a new serial for the same key, before and after expiry, never for a
revoked name; a real mutual-TLS server sees the same public key behind both certificates."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from shared.grpc_options import CHANNEL_OPTIONS
from shared.pki import create_federation, main
from shared.pki.authority import open_authority
from shared.pki.identity import subject_name
from shared.pki.registry import IssuanceRegistry
from shared.tls import TlsFiles, channel_credentials, peer_of, server_credentials
from tests.shared.certs_cli import refusal


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _issue_silo(tmp_path: Path, name: str = "hospital-a") -> tuple[Path, Path]:
    pki, site = tmp_path / "pki", tmp_path / name
    main(["init", "--ca-dir", str(pki), "--hosts", "localhost"])
    main(["request", "--name", name, "--out", str(site)])
    main(["sign", "--ca-dir", str(pki), "--role", "silo", str(site / f"{name}.csr")])
    return pki, site


def _whoami(context: grpc.ServicerContext) -> bytes:
    peer = peer_of(context)
    return json.dumps(asdict(peer) if peer is not None else {}).encode()


@contextmanager
def _identity_server(pki: Path) -> Iterator[int]:
    """A real mutual-TLS server, with the coordinator's certificate, answering who called."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda _request, context: _whoami(context))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Identity", {"WhoAmI": handler}),)
    )
    files = TlsFiles.in_directory(pki, "coordinator")
    port = server.add_secure_port("localhost:0", server_credentials(files))
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def _peer_seen(port: int, files: TlsFiles) -> dict[str, Any]:
    credentials = channel_credentials(files)
    with grpc.secure_channel(f"localhost:{port}", credentials, options=CHANNEL_OPTIONS) as chan:
        answer: bytes = chan.unary_unary("/test.Identity/WhoAmI")(b"", timeout=10)
    peer: dict[str, Any] = json.loads(answer)
    return peer


def _receive(pki: Path, site: Path, name: str) -> TlsFiles:
    for path in (pki / "bundles" / name).iterdir():
        shutil.copy(path, site / path.name)
    return TlsFiles.in_directory(site, name)


def test_renewal_keeps_the_key_and_changes_the_serial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki, site = _issue_silo(tmp_path)
    with _identity_server(pki) as port:
        before = _peer_seen(port, _receive(pki, site, "hospital-a"))
        capsys.readouterr()
        main(["renew", "--ca-dir", str(pki), "--name", "hospital-a", "--days", "30"])
        out = capsys.readouterr().out
        after = _peer_seen(port, _receive(pki, site, "hospital-a"))
    assert "stays valid until" in out and "next: send" in out
    assert (
        (before["name"], before["role"]) == (after["name"], after["role"]) == ("hospital-a", "silo")
    )
    assert after["serial"] != before["serial"]
    assert after["fingerprint"] != before["fingerprint"]
    assert after["public_key_fingerprint"] == before["public_key_fingerprint"]
    renewed = _cert(site / "hospital-a.pem")
    assert renewed.serial_number == after["serial"]
    days_left = renewed.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29) < days_left <= dt.timedelta(days=30)
    issued = IssuanceRegistry(ca_dir=pki).of_name("hospital-a")
    assert [r.serial for r in issued] == [before["serial"], after["serial"]]
    assert all(r.status == "valid" for r in issued)


def test_an_expired_certificate_is_renewed_and_the_admin_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    create_federation(pki, hosts=["localhost"], silos=[], admins=[])
    ca = open_authority(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    expired = (
        x509.CertificateBuilder()
        .subject_name(subject_name("hospital-a", "silo"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=35))
        .sign(ca.key, hashes.SHA256())
    )
    IssuanceRegistry(ca_dir=pki).record(expired)
    main(["renew", "--ca-dir", str(pki), "--name", "hospital-a", "--coordinator-address", "c:1"])
    assert "expired on" in capsys.readouterr().out
    renewed = _cert(pki / "bundles" / "hospital-a" / "hospital-a.pem")
    assert renewed.public_key() == key.public_key()
    assert renewed.not_valid_after_utc > now
    renewed.verify_directly_issued_by(ca.cert)


def test_renewal_in_a_demo_directory_replaces_the_certificates_in_place(tmp_path: Path) -> None:
    create_federation(tmp_path, hosts=["coord.example.org"], silos=["s1"], admins=["admin"])
    old_silo, old_coordinator = _cert(tmp_path / "s1.pem"), _cert(tmp_path / "coordinator.pem")
    for name in ("s1", "coordinator"):
        main(["renew", "--ca-dir", str(tmp_path), "--name", name])
    silo, coordinator = _cert(tmp_path / "s1.pem"), _cert(tmp_path / "coordinator.pem")
    assert silo.serial_number != old_silo.serial_number
    assert silo.public_key() == old_silo.public_key()
    assert coordinator.public_key() == old_coordinator.public_key()
    assert coordinator.extensions.get_extension_for_class(x509.SubjectAlternativeName) == (
        old_coordinator.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    )


@pytest.mark.parametrize(
    ("revoke_first", "name", "message"),
    [
        (True, "hospital-a", "is revoked and is not renewed"),
        (False, "hospital-z", "no certificate was issued to 'hospital-z'"),
    ],
)
def test_renewal_is_refused_for_revoked_or_unknown_names(
    tmp_path: Path, revoke_first: bool, name: str, message: str
) -> None:
    pki, _ = _issue_silo(tmp_path)
    if revoke_first:
        main(["revoke", "--ca-dir", str(pki), "--name", "hospital-a"])
    assert message in refusal(["renew", "--ca-dir", str(pki), "--name", name])
