"""What the admin's read commands list: silos (sessions with their identities) and runs."""

from __future__ import annotations

from coordinator.federation import Federation
from coordinator.identity import IdentityBook
from coordinator.registry import SiloRegistry
from coordinator.run_state import phase_proto
from shared.wire.v1 import federation_pb2 as pb


def silo_list(
    registry: SiloRegistry, identities: IdentityBook, *, hung_after_s: float = 0.0
) -> pb.SiloList:
    """Every silo with a session or a pinned identity (revoked ones included), by name; one
    busy with a task for longer than `hung_after_s` is noted as hung."""
    infos = {info.silo_id: info for info in registry.snapshot(hung_after_s=hung_after_s)}
    for name in identities.names():
        infos.setdefault(name, pb.SiloInfo(silo_id=name, state="never joined since restart"))
    for name, info in infos.items():
        pin = identities.identity(name)
        if pin is not None:
            info.key_fingerprint = pin.key_fingerprint
            info.certificate_not_after = pin.not_after
        revoked = identities.is_revoked_name(name)
        if revoked is not None:
            info.revoked, info.revoked_reason = True, revoked.reason
    return pb.SiloList(silos=[infos[name] for name in sorted(infos)])


def run_list(federation: Federation) -> pb.RunList:
    """Every run kept in the checkpoint directory, newest first."""
    lines = []
    for run_id in federation.store.run_ids():
        run = federation.store.load_run(run_id)
        current = federation.run
        if current is not None and current.run_id == run_id:
            run = current
        lines.append(
            pb.RunLine(
                run_id=run.run_id,
                state=phase_proto(run.phase),
                completed_rounds=run.completed_rounds,
                rounds=run.spec.rounds,
                strategy=run.spec.strategy,
                started_at=run.started_at,
                message=run.message,
            )
        )
    return pb.RunList(runs=lines)
