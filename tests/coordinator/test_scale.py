"""A federation of 200 silos on one coordinator: every silo holds its task stream, heartbeats
are answered, the admin is answered, and rounds run, with no thread held per silo."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from bench.protocol_silo import start_silos
from coordinator.run_state import RunSpec
from coordinator.server import serve
from shared.pki import create_federation
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import coordinator_config

SILOS = [f"hospital-{i:03d}" for i in range(200)]


@pytest.fixture(scope="module")
def many_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("many-certs")
    create_federation(directory, hosts=["localhost"], silos=SILOS, admins=["admin"])
    return directory


def _admin(port: int, certs: Path) -> pb_grpc.AdminStub:
    cert, key, ca = TlsFiles.in_directory(certs, "admin").read()
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    return pb_grpc.AdminStub(grpc.aio.secure_channel(f"localhost:{port}", credentials))


async def _federation_of_200(port: int, certs: Path, model: Path, registry_count: object) -> None:
    silos = await start_silos(target=f"localhost:{port}", certs=certs, names=SILOS, model_dir=model)
    try:
        deadline = time.monotonic() + 60
        while registry_count() < len(SILOS):  # type: ignore[operator]
            assert time.monotonic() < deadline, f"only {registry_count()} silos connected"  # type: ignore[operator]
            await asyncio.sleep(0.1)
        admin = _admin(port, certs)
        spec = RunSpec(rounds=2, silos_per_round=20, min_silos=20, round_deadline_s=60)
        await admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()), timeout=30)
        status = await admin.GetStatus(pb.StatusRequest(), timeout=10)
        while status.state == pb.RUN_STATE_RUNNING:
            assert time.monotonic() < deadline + 60, "the rounds did not finish"
            await asyncio.sleep(0.2)
            status = await admin.GetStatus(pb.StatusRequest(), timeout=10)
        assert status.state == pb.RUN_STATE_COMPLETED, status.message
        assert [len(r.contributed) for r in status.history] == [20, 20]
        listed = await admin.ListSilos(pb.StatusRequest(), timeout=10)
        assert sum(s.connected for s in listed.silos) == len(SILOS)
        assert sum(s.load.tasks for s in silos) == 40
        assert not [e for s in silos for e in s.load.task_errors]
        while min(len(s.load.heartbeat_s) for s in silos) < 3:  # every silo, 3 beats
            assert time.monotonic() < deadline + 90, "some silos' heartbeats went unanswered"
            await asyncio.sleep(0.2)
        assert sum(s.load.heartbeat_failures for s in silos) == 0
    finally:
        await asyncio.gather(*(s.stop() for s in silos))


def test_two_hundred_silos_hold_their_streams_and_rounds_run(
    many_certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    config = coordinator_config(many_certs, tiny_model, tmp_path / "checkpoints")
    with serve(config) as running:
        registry = running.federation.registry
        asyncio.run(
            _federation_of_200(running.port, many_certs, tiny_model, registry.connected_count)
        )
