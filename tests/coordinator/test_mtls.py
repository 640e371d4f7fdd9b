"""Mutual TLS: one test per refusal, each asserting the exact status code."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from coordinator.server import RunningCoordinator
from shared.grpc_options import CHANNEL_OPTIONS
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import tls
from tests.helpers import channel


def _admin_status(chan: grpc.Channel) -> pb.RunStatus:
    return pb_grpc.AdminStub(chan).GetStatus(pb.StatusRequest(), timeout=10)


def test_admin_certificate_is_served(coordinator: RunningCoordinator, certs: Path) -> None:
    with channel(coordinator.port, tls(certs, "admin")) as chan:
        assert _admin_status(chan).state == pb.RUN_STATE_IDLE


def test_no_client_certificate_fails_the_handshake(
    coordinator: RunningCoordinator, certs: Path
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    target = f"localhost:{coordinator.port}"
    with (
        grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS) as chan,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _admin_status(chan)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_fails_the_handshake(
    coordinator: RunningCoordinator, certs: Path, foreign_certs: Path
) -> None:
    foreign = tls(foreign_certs, "admin")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=foreign.key.read_bytes(),
        certificate_chain=foreign.cert.read_bytes(),
    )
    target = f"localhost:{coordinator.port}"
    with (
        grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS) as chan,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _admin_status(chan)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_silo_certificate_on_admin_service_is_denied(
    coordinator: RunningCoordinator, certs: Path
) -> None:
    with (
        channel(coordinator.port, tls(certs, "silo-1")) as chan,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _admin_status(chan)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "silo-1" in (refused.value.details() or "")


def test_admin_certificate_on_silo_service_is_denied(
    coordinator: RunningCoordinator, certs: Path
) -> None:
    with (
        channel(coordinator.port, tls(certs, "admin")) as chan,
        pytest.raises(grpc.RpcError) as refused,
    ):
        pb_grpc.SiloStub(chan).Heartbeat(pb.HeartbeatRequest(session_id="x"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
