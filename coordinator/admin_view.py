"""What `fedmllm-admin` prints: runs, rounds and silos as text lines or as JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from google.protobuf import json_format
from google.protobuf.message import Message

from shared.bounded import printable
from shared.wire.v1 import federation_pb2 as pb

EXPIRY_WARNING_DAYS = 30  # list-silos notes a certificate that expires sooner


def as_json(message: Message) -> str:
    """One line of JSON: field names as in the proto, every field, 64-bit integers as numbers."""
    return json.dumps(as_dict(message), sort_keys=True)


def as_dict(message: Message) -> dict[str, object]:
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def round_line(summary: pb.RoundSummary, total_rounds: int) -> str:
    """One round: who answered, loss, traffic and time, then what went wrong and evaluations."""
    parts = [
        f"round {summary.round}/{total_rounds}  silos {len(summary.contributed)}/"
        f"{len(summary.selected)} ({', '.join(printable(s) for s in summary.contributed)})  "
        f"mean train loss {summary.mean_train_loss:.4f}  "
        f"moved {_bytes(summary.bytes_sent)} down / {_bytes(summary.bytes_received)} up  "
        f"{summary.seconds:.1f} s"
    ]
    if summary.rejected:
        parts.append(f"{summary.rejected} update(s) rejected")
    if summary.reselections:
        why = "; ".join(printable(r, limit=120) for r in summary.reselections)
        parts.append(f"reselected {len(summary.reselections)}x ({why})")
    parts += [
        f"{printable(s)} failed ({printable(w, limit=120)})"
        for s, w in sorted(summary.failures.items())
    ]
    if summary.clipped:
        parts.append(f"clipped {', '.join(printable(s) for s in summary.clipped)}")
    if summary.excluded:
        parts.append(f"left out {', '.join(printable(s) for s in summary.excluded)}")
    if summary.evaluation:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(summary.evaluation.items()))
        by = (
            f" by {', '.join(printable(s) for s in summary.evaluated_by)}"
            if summary.evaluated_by
            else ""
        )
        parts.append(f"eval {scores}{by}")
    return "  ".join(parts)


def state_name(state: int) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_").lower()


def headline(status: pb.RunStatus) -> str:
    phase = pb.RoundPhase.Name(status.phase).removeprefix("ROUND_PHASE_").lower()
    running = status.state == pb.RUN_STATE_RUNNING and status.phase != pb.ROUND_PHASE_UNSPECIFIED
    return (
        f"run {status.run_id or '-'}: {state_name(status.state)}"
        + (f", phase {phase}" if running else "")
        + f", {status.completed_rounds}/{status.spec.rounds} rounds"
        + (f" — {printable(status.message, limit=200)}" if status.message else "")
    )


def progress_lines(status: pb.RunStatus) -> list[str]:
    """While a run is active: why it waits, how far each silo of the open round is, the ETA."""
    lines = []
    if status.waiting_reason:
        lines.append(f"waiting: {printable(status.waiting_reason, limit=200)}")
    if status.round_progress:
        stages = ", ".join(
            f"{printable(p.silo_id)} {printable(p.stage, limit=20)} ({p.seconds:.0f} s)"
            for p in status.round_progress
        )
        lines.append(f"round {status.completed_rounds + 1}: {stages}")
    if status.eta_s > 0:
        lines.append(f"estimated time to the end of the run: {duration(status.eta_s)}")
    return lines


def status_text(status: pb.RunStatus) -> str:
    lines = [headline(status), *progress_lines(status)]
    lines += [round_line(s, status.spec.rounds) for s in status.history]
    return "\n".join(lines)


def silo_table(silos: Sequence[pb.SiloInfo]) -> str:
    """One line per silo; names, states and notes come from silos and are printed sanitised."""
    lines = [f"{'silo':<20} {'connected':<10} {'samples':>8} {'seen':>8}  state"]
    for s in silos:
        connected = "revoked" if s.revoked else ("yes" if s.connected else "no")
        line = (
            f"{printable(s.silo_id):<20} {connected:<10} {s.num_train_samples:>8} "
            f"{s.seconds_since_seen:>7.1f}s  {printable(s.state)}"
        )
        notes = [printable(n, limit=100) for n in s.notes]
        if s.revoked:
            notes.insert(0, f"revoked: {printable(s.revoked_reason, limit=100)}")
        days_left = (s.certificate_not_after - time.time()) / 86_400
        if s.certificate_not_after and days_left < EXPIRY_WARNING_DAYS:
            expiry = time.strftime("%Y-%m-%d", time.localtime(s.certificate_not_after))
            notes.append(f"certificate expires {expiry}: renew it (fedmllm-certs renew)")
        lines.append(line + "".join(f"\n{'':<20} note: {n}" for n in notes))
    return "\n".join(lines)


def runs_text(runs: Sequence[pb.RunLine]) -> str:
    if not runs:
        return "no runs kept by this coordinator yet"
    return "\n".join(
        f"{line.run_id}  {state_name(line.state):<9} {line.completed_rounds}/{line.rounds} rounds  "
        f"{line.strategy:<10} started "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(line.started_at))}  "
        f"{printable(line.message, limit=80)}"
        for line in runs
    )
