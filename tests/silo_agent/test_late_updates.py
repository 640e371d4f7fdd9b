"""A silo names an update the coordinator refused because its round had closed as late (a
warning), not as a fault: the refusals here are the real coordinator's."""

from __future__ import annotations

from pathlib import Path

import grpc

from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.client import arrived_late
from tests.conftest import tls
from tests.helpers import ProtocolSilo, channel, constant_delta, refused

SILOS = ("silo-1", "silo-2")


def test_only_an_update_for_a_closed_round_is_late(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path
) -> None:
    prompt, slow = (ProtocolSilo(coordinator.port, tls(certs, n), tiny_model) for n in SILOS)
    spec = RunSpec(rounds=2, silos_per_round=2, min_silos=1, round_deadline_s=2.0)
    with channel(coordinator.port, tls(certs, "admin")) as admin:
        pb_grpc.AdminStub(admin).StartRun(pb.StartRunRequest(spec=spec.to_proto()))
    first, slow_first = prompt.next_task(), slow.next_task()
    start = prompt.download(first)
    prompt.upload(first, constant_delta(start, 0.1))
    second = prompt.next_task(timeout=30)  # round 1 closed at its deadline without `slow`
    assert second.round == 2
    late = refused(lambda: slow.upload(slow_first, constant_delta(start, 0.1)))
    assert arrived_late(slow_first, late), late.details()
    prompt.upload(second, constant_delta(start, 0.1))
    duplicate = refused(lambda: prompt.upload(second, constant_delta(start, 0.1)))
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS
    assert not arrived_late(second, duplicate)
    for silo in (prompt, slow):
        silo.close()
