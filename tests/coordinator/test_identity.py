"""Identity for the life of a federation, through a real coordinator over mutual TLS:
revocation live and after a restart (by the admin, or through a CRL file), identities pinned to
their key until the admin rotates them, renewed certificates accepted, a second agent with the
same certificate refused, and the certificates' expiry exported."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.server import serve
from shared.pki.authority import issue, open_authority
from shared.pki.crl import write_crl
from shared.pki.files import PUBLIC, write_atomic, write_private_key
from shared.pki.fingerprint import fingerprint_of, public_key_fingerprint_of, serial_of
from shared.pki.identity import ROLE_SILO
from shared.pki.revocation import RevocationList
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import coordinator_config, tls
from tests.helpers import ProtocolSilo, channel, join_request, refused


def _certificate(
    pki: Path, out: Path, name: str, *, key: ec.EllipticCurvePrivateKey | None = None
) -> TlsFiles:
    """A certificate for `name` signed by the federation's CA, for a new key unless given."""
    out.mkdir(parents=True, exist_ok=True)
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = issue(
        open_authority(pki),
        public_key=key.public_key(),
        common_name=name,
        role=ROLE_SILO,
        hosts=[],
        days=30,
    )
    write_atomic(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
    write_private_key(out / f"{name}.key", key)
    shutil.copy(pki / "ca.pem", out / "ca.pem")
    return TlsFiles.in_directory(out, name)


def _admin(port: int, certs: Path) -> pb_grpc.AdminStub:
    return pb_grpc.AdminStub(channel(port, tls(certs, "admin")))


def _silos(admin: pb_grpc.AdminStub) -> dict[str, pb.SiloInfo]:
    return {s.silo_id: s for s in admin.ListSilos(pb.StatusRequest()).silos}


def test_revocation_is_live_and_survives_a_restart(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    config = coordinator_config(certs, tiny_model, tmp_path / "state")
    with serve(config) as running:
        silo = ProtocolSilo(running.port, tls(certs, "silo-1"), tiny_model)
        admin = _admin(running.port, certs)
        listed = admin.RevokeSilo(pb.SiloRequest(silo_id="silo-1", reason="laptop stolen"))
        assert {s.silo_id: s.revoked for s in listed.silos}["silo-1"]
        deadline = time.monotonic() + 5
        while silo.stream_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert silo.stream_error is not None
        assert silo.stream_error.code() == grpc.StatusCode.PERMISSION_DENIED
        error = refused(lambda: silo.stub.Join(join_request(tiny_model)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in (error.details() or "") and "laptop stolen" in (error.details() or "")
        assert running.federation.registry.connected() == []
        error = refused(lambda: admin.RevokeSilo(pb.SiloRequest(silo_id="nobody")))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        silo.close()
    with serve(config) as running:  # a restart keeps the revocation
        stub = pb_grpc.SiloStub(channel(running.port, tls(certs, "silo-1")))
        error = refused(lambda: stub.Join(join_request(tiny_model)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        silos = _silos(_admin(running.port, certs))
        assert silos["silo-1"].revoked and silos["silo-1"].revoked_reason == "laptop stolen"
    assert oct((tmp_path / "state" / "revocations.json").stat().st_mode & 0o777) == "0o600"


def test_a_crl_file_is_honoured_as_it_changes(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    crl = tmp_path / "crl.pem"
    write_crl(crl, entries=[], ca=open_authority(certs))
    config = replace(coordinator_config(certs, tiny_model, tmp_path / "state"), crl=crl)
    with serve(config) as running:
        stub = pb_grpc.SiloStub(channel(running.port, tls(certs, "silo-2")))
        stub.Join(join_request(tiny_model))
        offline = RevocationList(directory=tmp_path / "offline")
        cert_pem = (certs / "silo-2.pem").read_bytes()
        entry = offline.revoke(
            name="silo-2",
            fingerprint=fingerprint_of(cert_pem),
            serial=serial_of(cert_pem),
            reason="keyCompromise",
        )
        time.sleep(1.1)  # a new modification time
        write_crl(crl, entries=[entry], ca=open_authority(certs))
        deadline = time.monotonic() + 10
        while True:
            try:
                stub.Heartbeat(pb.HeartbeatRequest(session_id="x"))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
                break
            assert time.monotonic() < deadline, "the CRL was not taken in"
            time.sleep(0.2)


def test_an_identity_is_pinned_to_its_key_until_rotated(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "state")) as running:
        first = ProtocolSilo(running.port, tls(certs, "silo-1"), tiny_model)
        other_key = _certificate(certs, tmp_path / "impostor", "silo-1")
        stub = pb_grpc.SiloStub(channel(running.port, other_key))
        error = refused(lambda: stub.Join(join_request(tiny_model)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "pinned to another key" in (error.details() or "")
        assert "fedmllm-admin rotate --silo silo-1" in (error.details() or "")
        assert running.federation.registry.connected() == ["silo-1"]  # not knocked off
        renewed_key = ec.generate_private_key(ec.SECP256R1())
        admin = _admin(running.port, certs)
        admin.RotateSilo(pb.SiloRequest(silo_id="silo-1"))
        rotated = _certificate(certs, tmp_path / "rotated", "silo-1", key=renewed_key)
        pb_grpc.SiloStub(channel(running.port, rotated)).Join(join_request(tiny_model))
        renewed = _certificate(certs, tmp_path / "renewed", "silo-1", key=renewed_key)
        pb_grpc.SiloStub(channel(running.port, renewed)).Join(join_request(tiny_model))  # same key
        error = refused(lambda: first.stub.Join(join_request(tiny_model)))  # the old key now
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        renewed_pem = (tmp_path / "renewed" / "silo-1.pem").read_bytes()
        pinned = _silos(admin)["silo-1"].key_fingerprint
        assert pinned == public_key_fingerprint_of(renewed_pem)
        first.close()


def test_a_second_agent_with_the_same_certificate_is_refused_not_flapping(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "state")) as running:
        request = join_request(tiny_model)
        request.agent_instance = "agent-a"
        first = ProtocolSilo(running.port, tls(certs, "silo-1"), tiny_model, request=request)
        second = pb_grpc.SiloStub(channel(running.port, tls(certs, "silo-1")))
        other = join_request(tiny_model)
        other.agent_instance = "agent-b"
        error = refused(lambda: second.Join(other))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        time.sleep(0.3)
        assert first.stream_error is None  # the first agent keeps its session
        notes = _silos(_admin(running.port, certs))["silo-1"].notes
        assert any("second agent" in note for note in notes)
        first.close()


def test_certificate_expiry_is_exported(certs: Path, tiny_model: Path, tmp_path: Path) -> None:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "state")) as running:
        ProtocolSilo(running.port, tls(certs, "silo-1"), tiny_model).close()
        registry = running.federation.metrics.registry
        left = registry.get_sample_value("fedmllm_certificate_expiry_seconds", {"name": "silo-1"})
        own = registry.get_sample_value(
            "fedmllm_certificate_expiry_seconds", {"name": "coordinator"}
        )
    assert left is not None and 300 * 86400 < left <= 366 * 86400
    assert own is not None and own > 300 * 86400


def _cli(port: int, certs: Path, *command: str) -> subprocess.CompletedProcess[str]:
    admin = tls(certs, "admin")
    return subprocess.run(
        [sys.executable, "-m", "coordinator.admin_cli", "--coordinator", f"localhost:{port}",
         "--cert", str(admin.cert), "--key", str(admin.key), "--ca", str(admin.ca), *command],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_admin_revokes_rotates_and_lists_from_the_command_line(
    certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with serve(coordinator_config(certs, tiny_model, tmp_path / "state")) as running:
        ProtocolSilo(running.port, tls(certs, "silo-1"), tiny_model).close()
        ProtocolSilo(running.port, tls(certs, "silo-2"), tiny_model).close()
        rotated = _cli(running.port, certs, "rotate", "--silo", "silo-2")
        assert rotated.returncode == 0 and "silo-2 will be pinned" in rotated.stdout
        revoked = _cli(running.port, certs, "revoke", "--silo", "silo-1", "--reason", "left")
        assert revoked.returncode == 0, revoked.stderr
        table = _cli(running.port, certs, "list-silos").stdout
        (row,) = [line for line in table.splitlines() if line.startswith("silo-1")]
        assert "revoked" in row and "note: revoked: left" in table
        unknown = _cli(running.port, certs, "revoke", "--silo", "silo-9")
        assert unknown.returncode != 0 and "NOT_FOUND" in unknown.stderr
        assert "no runs" in _cli(running.port, certs, "runs").stdout
