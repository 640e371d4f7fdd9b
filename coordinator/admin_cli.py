"""`fedmllm-admin`: start, watch, inspect and stop runs, authenticated by an admin certificate."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from coordinator.run_config import RunConfigError, add_flags, spec_from
from shared.bounded import printable
from shared.grpc_options import CHANNEL_OPTIONS
from shared.payload import PayloadDigest, assemble
from shared.tls import add_tls_arguments, channel_credentials, tls_files
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

_FINAL = {pb.RUN_STATE_COMPLETED, pb.RUN_STATE_STOPPED, pb.RUN_STATE_FAILED}


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError


def round_line(summary: pb.RoundSummary, total_rounds: int) -> str:
    """One round: silos that answered, loss, traffic, time, and evaluation when there was one."""
    line = (
        f"round {summary.round}/{total_rounds}  silos {len(summary.contributed)}/"
        f"{len(summary.selected)} ({', '.join(summary.contributed)})  "
        f"mean train loss {summary.mean_train_loss:.4f}  "
        f"moved {_bytes(summary.bytes_sent)} down / {_bytes(summary.bytes_received)} up  "
        f"{summary.seconds:.1f} s"
    )
    if summary.rejected:
        line += f"  {summary.rejected} rejected"
    if summary.clipped:
        line += f"  clipped {', '.join(summary.clipped)}"
    if summary.excluded:
        line += f"  left out {', '.join(summary.excluded)}"
    for silo, why in sorted(summary.failures.items()):
        line += f"  {printable(silo)} failed ({printable(why, limit=120)})"
    if summary.evaluation:
        line += "  eval " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(summary.evaluation.items()))
    return line


def status_text(status: pb.RunStatus) -> str:
    state = pb.RunState.Name(status.state).removeprefix("RUN_STATE_").lower()
    phase = pb.RoundPhase.Name(status.phase).removeprefix("ROUND_PHASE_").lower()
    lines = [
        f"run {status.run_id or '-'}: {state}"
        + (f", phase {phase}" if status.state == pb.RUN_STATE_RUNNING else "")
        + f", {status.completed_rounds}/{status.spec.rounds} rounds"
        + (f" — {status.message}" if status.message else "")
    ]
    lines += [round_line(s, status.spec.rounds) for s in status.history]
    return "\n".join(lines)


def follow(stub: pb_grpc.AdminStub, *, poll_s: float = 0.5, printed: int = 0) -> pb.RunStatus:
    """Print one line per completed round until the run ends; return the final status."""
    while True:
        status: pb.RunStatus = stub.GetStatus(pb.StatusRequest())
        for summary in status.history[printed:]:
            print(round_line(summary, status.spec.rounds), flush=True)
        printed = len(status.history)
        if status.state in _FINAL:
            return status
        time.sleep(poll_s)


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
        lines.append(line + "".join(f"\n{'':<20} note: {n}" for n in notes))
    return "\n".join(lines)


def export_adapter(stub: pb_grpc.AdminStub, *, round_index: int, out: Path) -> pb.ExportHeader:
    """adapter_config.json and adapter_model.safetensors, checked against their digest."""
    stream = stub.ExportAdapter(pb.ExportRequest(round=round_index))
    header: pb.ExportHeader = next(stream).header
    payload = assemble(
        PayloadDigest(header.adapter.total_bytes, header.adapter.sha256),
        (m.data for m in stream),
        max_bytes=header.adapter.total_bytes,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_model.safetensors").write_bytes(payload)
    (out / "adapter_config.json").write_text(header.adapter_config_json)
    return header


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmllm-admin", description=__doc__)
    parser.add_argument("--coordinator", default="localhost:50051", help="HOST:PORT")
    add_tls_arguments(parser, whose="the admin's")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start-run", help="start a run")
    add_flags(start)
    start.add_argument(
        "--follow", action="store_true", help="print a line per round until the run ends"
    )
    status = commands.add_parser("status", help="the run's state and its rounds")
    status.add_argument("--follow", action="store_true")
    commands.add_parser("list-silos", help="silos that joined and whether they are connected")
    commands.add_parser("stop", help="stop the running run after its checkpointed rounds")
    commands.add_parser("pause", help="hold the run after the open round")
    commands.add_parser("resume", help="go on with a paused run")
    revoke = commands.add_parser("revoke", help="cut a silo off now: its certificate is refused")
    revoke.add_argument("--silo", required=True, help="the silo's name")
    revoke.add_argument("--reason", default="", help="kept with the revocation")
    rotate = commands.add_parser("rotate", help="accept the next key a silo presents")
    rotate.add_argument("--silo", required=True, help="the silo's name")
    commands.add_parser("runs", help="every run kept by the coordinator")
    export = commands.add_parser("export", help="write a round's adapter as a PEFT directory")
    export.add_argument("--round", type=int, default=0, help="a kept round (default: latest)")
    export.add_argument("--out", type=Path, required=True, help="directory to write")
    return parser


def _run(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    if args.command == "start-run":
        spec = spec_from(args)
        result = stub.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        print(f"run {result.run_id} started", flush=True)
        if args.follow:
            result = follow(stub)
            print(status_text(result).splitlines()[0])
            return 0 if result.state == pb.RUN_STATE_COMPLETED else 1
    elif args.command == "status":
        if args.follow:
            follow(stub)
        print(status_text(stub.GetStatus(pb.StatusRequest())))
    elif args.command == "list-silos":
        print(silo_table(stub.ListSilos(pb.StatusRequest()).silos))
    elif args.command in ("revoke", "rotate"):
        call = stub.RevokeSilo if args.command == "revoke" else stub.RotateSilo
        call(pb.SiloRequest(silo_id=args.silo, reason=getattr(args, "reason", "")))
        done = "revoked" if args.command == "revoke" else "will be pinned to the next key it shows"
        print(f"silo {args.silo} {done}")
    elif args.command == "runs":
        runs = stub.ListRuns(pb.StatusRequest()).runs
        if not runs:
            print("no runs kept by this coordinator yet")
        for line in runs:
            state = pb.RunState.Name(line.state).removeprefix("RUN_STATE_").lower()
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(line.started_at))
            print(
                f"{line.run_id}  {state:<9} {line.completed_rounds}/{line.rounds} rounds  "
                f"{line.strategy:<10} started {started}  {printable(line.message, limit=80)}"
            )
    elif args.command in ("pause", "resume"):
        call = stub.PauseRun if args.command == "pause" else stub.ResumeRun
        print(status_text(call(pb.StopRequest())).splitlines()[0])
    elif args.command == "export":
        header = export_adapter(stub, round_index=args.round, out=args.out)
        print(f"round {header.round} of run {header.run_id} written to {args.out}")
    elif args.command == "stop":
        print(status_text(stub.StopRun(pb.StopRequest())).splitlines()[0])
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    credentials = channel_credentials(tls_files(args))
    with grpc.secure_channel(args.coordinator, credentials, options=CHANNEL_OPTIONS) as channel:
        try:
            code = _run(args, pb_grpc.AdminStub(channel))
        except RunConfigError as exc:
            parser.error(str(exc))
        except grpc.RpcError as exc:
            print(f"fedmllm-admin: {exc.code().name}: {exc.details()}", file=sys.stderr)
            code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
