"""The CSR flow: the key stays where `request` made it, `sign` certifies it or refuses clearly,
and the bundle it writes serves mutual TLS against a real coordinator."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from coordinator.server import serve
from shared.pki import main
from shared.pki.fingerprint import fingerprint_of, public_key_fingerprint_of
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import coordinator_config
from tests.helpers import channel
from tests.shared.certs_cli import refusal


def _init(pki: Path) -> None:
    main(["init", "--ca-dir", str(pki), "--hosts", "localhost,127.0.0.1"])


def _request(site: Path, name: str) -> Path:
    main(["request", "--name", name, "--out", str(site)])
    return site / f"{name}.csr"


def _sign(pki: Path, csr: Path, role: str, *extra: str) -> None:
    main(["sign", "--ca-dir", str(pki), "--role", role, *extra, str(csr)])


def _receive(pki: Path, site: Path, name: str) -> TlsFiles:
    """What the recipient does with its bundle: put its files beside its key."""
    for path in (pki / "bundles" / name).iterdir():
        shutil.copy(path, site / path.name)
    return TlsFiles.in_directory(site, name)


def _refusal(pki: Path, csr: Path, role: str, *extra: str) -> str:
    return refusal(["sign", "--ca-dir", str(pki), "--role", role, *extra, str(csr)])


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: str, path: Path) -> Path:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_request_makes_an_owner_only_key_and_a_verifiable_csr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csr_path = _request(tmp_path / "site", "hospital-a")
    key = tmp_path / "site" / "hospital-a.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "site").stat().st_mode) == 0o700
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp256r1"
    assert csr.public_key() == private.public_key()
    assert "next: send" in capsys.readouterr().out
    _request(tmp_path / "site", "hospital-a")  # a rerun keeps the key
    assert serialization.load_pem_private_key(key.read_bytes(), password=None).public_key() == (
        private.public_key()
    )


def test_signed_bundle_serves_mutual_tls_against_a_real_coordinator(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    ops_site, silo_site = tmp_path / "ops", tmp_path / "hospital-a"
    _sign(pki, _request(ops_site, "ops"), "admin")
    _sign(pki, _request(silo_site, "hospital-a"), "silo")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("next: send") and "silo-agent --coordinator localhost:50051" in last
    bundle = pki / "bundles" / "hospital-a"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "ca.pem",
        "coordinator-address",
        "hospital-a.pem",
    ]
    assert (bundle / "coordinator-address").read_text() == "localhost:50051\n"
    assert not list(pki.rglob("*hospital-a.key")) and not list(pki.rglob("ops.key"))
    ops, silo = _receive(pki, ops_site, "ops"), _receive(pki, silo_site, "hospital-a")
    with serve(coordinator_config(pki, tiny_model, tmp_path / "checkpoints")) as running:
        with channel(running.port, ops) as chan:
            status = pb_grpc.AdminStub(chan).GetStatus(pb.StatusRequest(), timeout=10)
            assert status.state == pb.RUN_STATE_IDLE
        with channel(running.port, silo) as chan:
            beat = pb_grpc.SiloStub(chan).Heartbeat(pb.HeartbeatRequest(session_id="x"), timeout=10)
            assert not beat.session_known
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.AdminStub(chan).GetStatus(pb.StatusRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_registry_records_every_issuance_owner_only(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    _sign(pki, _request(tmp_path / "site", "hospital-a"), "silo", "--coordinator-address", "c:1")
    registry = pki / "issued.json"
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    cert_pem = (pki / "bundles" / "hospital-a" / "hospital-a.pem").read_bytes()
    text = registry.read_text()
    assert fingerprint_of(cert_pem) in text and public_key_fingerprint_of(cert_pem) in text
    assert (pki / "bundles" / "hospital-a" / "coordinator-address").read_text() == "c:1\n"


def test_reserved_and_unsafe_names_are_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    for name in ("ca", "coordinator"):
        assert "is reserved" in _refusal(pki, _csr(key, name, tmp_path / f"{name}.csr"), "silo")
    unsafe = _csr(key, "../evil", tmp_path / "evil.csr")
    assert "may hold only letters" in _refusal(pki, unsafe, "admin")
    assert not (pki / "bundles").exists()


def test_a_name_already_issued_to_another_key_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    _sign(pki, _request(tmp_path / "site", "hospital-a"), "silo")
    impostor = _request(tmp_path / "elsewhere", "hospital-a")
    message = _refusal(pki, impostor, "silo")
    assert "'hospital-a' is already issued to another key" in message
    assert "fedmllm-certs revoke" in message


def test_a_name_of_the_other_role_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    csr = _request(tmp_path / "site", "hospital-a")
    _sign(pki, csr, "silo")
    assert "'hospital-a' is already a silo certificate" in _refusal(pki, csr, "admin")


def test_one_key_under_two_names_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    _sign(pki, _request(tmp_path / "site", "hospital-a"), "silo")
    key = serialization.load_pem_private_key(
        (tmp_path / "site" / "hospital-a.key").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    twin = _csr(key, "hospital-b", tmp_path / "hospital-b.csr")
    assert "already certified as 'hospital-a'" in _refusal(pki, twin, "silo")


def test_an_altered_request_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    der = bytearray(
        x509.load_pem_x509_csr(_request(tmp_path / "site", "hospital-a").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01  # the last byte of the signature
    altered = tmp_path / "altered.csr"
    altered.write_bytes(x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM))
    assert "signature is invalid" in _refusal(pki, altered, "silo")


def test_weak_keys_bad_addresses_and_days_are_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki)
    weak = _csr(rsa.generate_private_key(65537, 1024), "hospital-a", tmp_path / "weak.csr")
    assert "at least 2048 bits" in _refusal(pki, weak, "silo")
    csr = _request(tmp_path / "site", "hospital-a")
    for extra, message in (
        (["--days", "0"], "--days must be a positive number of days, not 0"),
        (["--coordinator-address", "no-port"], "is not HOST:PORT"),
    ):
        assert message in _refusal(pki, csr, "silo", *extra)
    assert "hospital-a" not in (pki / "issued.json").read_text()
