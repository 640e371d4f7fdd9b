"""Revocation: the list the coordinator keeps, `fedmllm-certs revoke`, and the signed CRL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.errors import CertificateError
from shared.pki import create_federation, main
from shared.pki.crl import load_crl
from shared.pki.fingerprint import fingerprint_of, not_after_of, public_key_fingerprint_of
from shared.pki.registry import IssuanceRegistry
from shared.pki.revocation import RevocationList
from tests.shared.certs_cli import refusal


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    create_federation(directory, hosts=["localhost"], silos=["s1", "s2"], admins=["admin"])
    return directory


def test_fingerprint_expiry_and_key_of_a_pem_certificate(pki: Path) -> None:
    pem = (pki / "s1.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert fingerprint_of(pem) == hashlib.sha256(der).hexdigest()
    assert not_after_of(pem) == cert.not_valid_after_utc
    assert not_after_of(pem).tzinfo is not None
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_key_fingerprint_of(pem) == hashlib.sha256(spki).hexdigest()
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        fingerprint_of(b"not a certificate")


def test_revocation_list_survives_a_restart_owner_only(tmp_path: Path, pki: Path) -> None:
    pem = (pki / "s1.pem").read_bytes()
    state = tmp_path / "state"
    revocations = RevocationList(directory=state)
    assert not revocations.is_revoked(fingerprint=fingerprint_of(pem))
    entry = revocations.revoke(
        name="s1", fingerprint=fingerprint_of(pem), serial=None, reason="keyCompromise"
    )
    assert revocations.revoke(name="s1", fingerprint=fingerprint_of(pem).upper()) == entry
    revocations.revoke(name="s2", serial=x509.load_pem_x509_certificate(pem).serial_number + 1)
    assert stat.S_IMODE(revocations.path.stat().st_mode) == 0o600
    reopened = RevocationList(directory=state)
    assert reopened.entries() == revocations.entries()
    assert len(reopened.entries()) == 2
    assert reopened.is_revoked(fingerprint=fingerprint_of(pem))
    assert reopened.find(fingerprint=fingerprint_of(pem)) == entry
    assert entry.reason == "keyCompromise" and entry.name == "s1"
    assert not reopened.is_revoked(fingerprint=fingerprint_of((pki / "s2.pem").read_bytes()))
    with pytest.raises(CertificateError, match="needs its fingerprint or serial"):
        reopened.revoke(name="s2")


def test_revoke_command_marks_the_registry_and_writes_a_signed_crl(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s1 = x509.load_pem_x509_certificate((pki / "s1.pem").read_bytes())
    main(["revoke", "--ca-dir", str(pki), "--name", "s1", "--reason", "keyCompromise"])
    assert "fedmllm-admin revoke --silo s1" in capsys.readouterr().out
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(ca.public_key())
    revoked = crl.get_revoked_certificate_by_serial_number(s1.serial_number)
    assert revoked is not None and len(crl) == 1
    reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=300)
    statuses = {r.name: r.status for r in IssuanceRegistry(ca_dir=pki).records()}
    assert statuses == {"coordinator": "valid", "s1": "revoked", "s2": "valid", "admin": "valid"}
    listed = RevocationList(directory=pki)
    assert listed.is_revoked(fingerprint=fingerprint_of((pki / "s1.pem").read_bytes()))
    assert stat.S_IMODE(listed.path.stat().st_mode) == 0o600
    assert "already revoked" in refusal(["revoke", "--ca-dir", str(pki), "--name", "s1"])


def test_coordinator_honours_the_crl_through_its_own_list(tmp_path: Path, pki: Path) -> None:
    main(["revoke", "--ca-dir", str(pki), "--name", "s2"])
    s2 = x509.load_pem_x509_certificate((pki / "s2.pem").read_bytes())
    entries = load_crl(pki / "crl.pem", ca_cert_pem=(pki / "ca.pem").read_bytes())
    assert [(e.serial, e.name, e.reason) for e in entries] == [
        (s2.serial_number, None, "unspecified")
    ]
    coordinator_list = RevocationList(directory=tmp_path / "state")
    assert coordinator_list.include(entries) == 1
    assert coordinator_list.include(entries) == 0
    assert RevocationList(directory=tmp_path / "state").is_revoked(serial=s2.serial_number)


def test_a_crl_not_signed_by_the_federation_ca_is_refused(tmp_path: Path, pki: Path) -> None:
    foreign = tmp_path / "foreign"
    create_federation(foreign, hosts=["localhost"], silos=["s1"], admins=[])
    main(["revoke", "--ca-dir", str(foreign), "--name", "s1"])
    with pytest.raises(CertificateError, match="not signed by the federation CA"):
        load_crl(foreign / "crl.pem", ca_cert_pem=(pki / "ca.pem").read_bytes())
    main(["revoke", "--ca-dir", str(pki), "--name", "s1"])
    tampered = bytearray(
        x509.load_pem_x509_crl((pki / "crl.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )
    tampered[-1] ^= 0x01
    altered = tmp_path / "altered.crl"
    altered.write_bytes(
        x509.load_der_x509_crl(bytes(tampered)).public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CertificateError, match="not signed by the federation CA"):
        load_crl(altered, ca_cert_pem=(pki / "ca.pem").read_bytes())
    with pytest.raises(CertificateError, match="not a readable PEM CRL"):
        load_crl(tmp_path / "missing.pem", ca_cert_pem=(pki / "ca.pem").read_bytes())


def test_a_revoked_name_gets_a_new_key_only_after_revocation(tmp_path: Path, pki: Path) -> None:
    site = tmp_path / "site"
    main(["request", "--name", "s1", "--out", str(site)])
    refused = refusal(["sign", "--ca-dir", str(pki), "--role", "silo", str(site / "s1.csr")])
    assert "already issued to another key" in refused
    main(["revoke", "--ca-dir", str(pki), "--name", "s1"])
    main(["sign", "--ca-dir", str(pki), "--role", "silo", str(site / "s1.csr")])
    issued = IssuanceRegistry(ca_dir=pki).of_name("s1")
    assert [r.status for r in issued] == ["revoked", "valid"]
    revoked_json = json.loads((pki / "revocations.json").read_text())["revoked"]
    assert [e["name"] for e in revoked_json] == ["s1"]
