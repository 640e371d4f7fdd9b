"""`fedmllm-certs`: roles, SANs, key permissions, idempotence."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shared.pki import create_federation, main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_carry_identity_role_and_sans(tmp_path: Path) -> None:
    main(
        [
            "--out",
            str(tmp_path),
            "--hosts",
            "coord.example.org,10.1.2.3",
            "--silos",
            "hospital-a,hospital-b",
            "--admins",
            "ops",
        ]
    )
    silo = _cert(tmp_path / "hospital-a.pem")
    assert silo.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    assert silo.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "silo"
    ops = _cert(tmp_path / "ops.pem")
    assert ops.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "admin"
    san = (
        _cert(tmp_path / "coordinator.pem")
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    ca = _cert(tmp_path / "ca.pem")
    silo.verify_directly_issued_by(ca)


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    create_federation(tmp_path, hosts=["localhost"], silos=["s1"], admins=["admin"])
    keys = sorted(tmp_path.glob("*.key"))
    assert {k.stem for k in keys} == {"ca", "coordinator", "s1", "admin"}
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_rerun_adds_silos_and_keeps_existing_keys(tmp_path: Path) -> None:
    create_federation(tmp_path, hosts=["localhost"], silos=["s1"], admins=["admin"])
    ca_key, s1_key = (tmp_path / "ca.key").read_bytes(), (tmp_path / "s1.key").read_bytes()
    create_federation(tmp_path, hosts=["localhost"], silos=["s1", "s2"], admins=["admin"])
    assert (tmp_path / "ca.key").read_bytes() == ca_key
    assert (tmp_path / "s1.key").read_bytes() == s1_key
    _cert(tmp_path / "s2.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))


@pytest.mark.parametrize("bad", ["../evil", "coordinator", ""])
def test_unsafe_or_reserved_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        create_federation(tmp_path, hosts=["localhost"], silos=[bad or " "], admins=["admin"])
