"""`fedmllm-certs` demo mode: roles, SANs, validity, file modes, idempotence and its refusals."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shared.errors import CertificateError
from shared.pki import create_federation, main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _days_left(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)) / dt.timedelta(days=1)


def test_certificates_carry_identity_role_and_sans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
    assert capsys.readouterr().out.startswith("demo mode: every private key is made here")
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


def test_ca_lasts_ten_years_and_leaves_one(tmp_path: Path) -> None:
    create_federation(tmp_path, hosts=["localhost"], silos=["s1"], admins=["admin"])
    assert 3649 < _days_left(_cert(tmp_path / "ca.pem")) <= 3650
    for leaf in ("coordinator", "s1", "admin"):
        assert 364 < _days_left(_cert(tmp_path / f"{leaf}.pem")) <= 365


def test_private_keys_and_registry_are_owner_only(tmp_path: Path) -> None:
    create_federation(tmp_path / "pki", hosts=["localhost"], silos=["s1"], admins=["admin"])
    keys = sorted((tmp_path / "pki").glob("*.key"))
    assert {k.stem for k in keys} == {"ca", "coordinator", "s1", "admin"}
    for private in [*keys, tmp_path / "pki" / "issued.json", tmp_path / "pki"]:
        assert stat.S_IMODE(private.stat().st_mode) & 0o077 == 0, private
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_rerun_adds_silos_and_keeps_existing_keys(tmp_path: Path) -> None:
    create_federation(tmp_path, hosts=["localhost"], silos=["s1"], admins=["admin"])
    ca_key, s1_key = (tmp_path / "ca.key").read_bytes(), (tmp_path / "s1.key").read_bytes()
    s1_cert = (tmp_path / "s1.pem").read_bytes()
    notes = create_federation(tmp_path, hosts=["localhost"], silos=["s1", "s2"], admins=["admin"])
    assert notes == []
    assert (tmp_path / "ca.key").read_bytes() == ca_key
    assert (tmp_path / "s1.key").read_bytes() == s1_key
    assert (tmp_path / "s1.pem").read_bytes() == s1_cert
    _cert(tmp_path / "s2.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))


def test_changed_hosts_reissue_the_coordinator_certificate_for_the_same_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--out", str(tmp_path), "--hosts", "old.example.org"])
    key, old = (tmp_path / "coordinator.key").read_bytes(), _cert(tmp_path / "coordinator.pem")
    capsys.readouterr()
    main(["--out", str(tmp_path), "--hosts", "new.example.org,10.0.0.5"])
    assert "re-issued" in capsys.readouterr().out
    new = _cert(tmp_path / "coordinator.pem")
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["new.example.org"]
    assert new.serial_number != old.serial_number
    assert new.public_key() == old.public_key()
    assert (tmp_path / "coordinator.key").read_bytes() == key


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--silos", "ca"], "'ca' is reserved"),
        (["--silos", "coordinator"], "'coordinator' is reserved"),
        (["--admins", "coordinator"], "'coordinator' is reserved"),
        (["--silos", "../evil"], "may hold only letters"),
        (["--silos", "ops", "--admins", "ops"], "ops: a name is a silo or an admin, not both"),
        (["--silos", "s1", "--days", "0"], "--days must be a positive number of days, not 0"),
        (["--silos", "s1", "--ca-days", "-1"], "--ca-days must be a positive number"),
    ],
)
def test_misuse_is_refused_with_one_line_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path / "pki"), *argv])
    said = capsys.readouterr().err
    assert refused.value.code == 4
    assert message in said and said.startswith("fedmllm-certs: ")
    assert said.count("\n") == 1
    assert not (tmp_path / "pki").exists()


def test_a_silo_name_is_not_reissued_as_an_admin_on_a_rerun(tmp_path: Path) -> None:
    create_federation(tmp_path, hosts=["localhost"], silos=["ops"], admins=[])
    with pytest.raises(CertificateError, match="'ops' is already a silo certificate"):
        create_federation(tmp_path, hosts=["localhost"], silos=[], admins=["ops"])
    role = _cert(tmp_path / "ops.pem").subject.get_attributes_for_oid(
        NameOID.ORGANIZATIONAL_UNIT_NAME
    )
    assert role[0].value == "silo"
