"""`fedmllm-admin`: start, watch, inspect and stop runs, authenticated by an admin certificate."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from coordinator.admin_view import (
    as_dict,
    as_json,
    headline,
    round_line,
    runs_text,
    silo_table,
    status_text,
)
from coordinator.run_config import add_flags, spec_from
from shared.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    Parser,
    argv_or_sys,
    config_error,
    run_command,
)
from shared.connection import Retry, add_connection_arguments, connection_of, wait_for_coordinator
from shared.credentials import check_credentials
from shared.grpc_options import CHANNEL_OPTIONS
from shared.payload import PayloadDigest, receive_chunks
from shared.pki.identity import ROLE_ADMIN
from shared.tls import channel_credentials
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

PROG = "fedmllm-admin"
_FINAL = {pb.RUN_STATE_COMPLETED, pb.RUN_STATE_STOPPED, pb.RUN_STATE_FAILED}
CALL_TIMEOUT_S = 60.0  # one admin call; a coordinator that takes longer is in trouble
_EXIT_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_USAGE,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_USAGE,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_REFUSED,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_REFUSED,
}
Handler = Callable[[argparse.Namespace, pb_grpc.AdminStub], int]


def export_adapter(
    stub: pb_grpc.AdminStub, *, round_index: int, out: Path, run_id: str = ""
) -> pb.ExportHeader:
    """adapter_config.json and adapter_model.safetensors, checked against their CRC-32."""
    stream = stub.ExportAdapter(pb.ExportRequest(round=round_index, run_id=run_id))
    header: pb.ExportHeader = next(stream).header
    chunks = receive_chunks(
        PayloadDigest.from_header(header.adapter),
        (m.data for m in stream),
        max_bytes=header.adapter.total_bytes,
    )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "adapter_model.safetensors").open("wb") as adapter:
        adapter.writelines(chunks)
    (out / "adapter_config.json").write_text(header.adapter_config_json)
    return header


def _poll(stub: pb_grpc.AdminStub, run_id: str) -> pb.RunStatus:
    """The run's status; while the coordinator is away (restarting), retry and say so."""
    delay = 1.0
    while True:
        try:
            status: pb.RunStatus = stub.GetStatus(pb.StatusRequest(run_id=run_id), timeout=10)
            return status
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            away = f"coordinator away ({exc.code().name}); retrying in {delay:.0f} s"
            print(f"{PROG}: {away}", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def follow(
    stub: pb_grpc.AdminStub, *, run_id: str, json_lines: bool = False, poll_s: float = 0.5
) -> pb.RunStatus:
    """Print each round as it completes, and why the run waits when it does, until it ends."""
    printed, waiting = 0, ""
    status = _poll(stub, run_id)
    if not json_lines:
        print(headline(status), flush=True)
    while True:
        for summary in status.history[printed:]:
            line = json.dumps({"round": as_dict(summary)}) if json_lines else None
            print(line or round_line(summary, status.spec.rounds), flush=True)
        printed = len(status.history)
        if status.waiting_reason != waiting and status.waiting_reason:
            shown = json.dumps({"waiting": status.waiting_reason}) if json_lines else None
            print(shown or f"waiting: {status.waiting_reason}", flush=True)
        waiting = status.waiting_reason
        if status.state in _FINAL:
            return status
        time.sleep(poll_s)
        status = _poll(stub, run_id)


def _follow_to_end(stub: pb_grpc.AdminStub, args: argparse.Namespace, run_id: str) -> int:
    try:
        final = follow(stub, run_id=run_id, json_lines=args.json)
    except KeyboardInterrupt:
        raise CliError(
            f"stopped following; run {run_id} goes on (fedmllm-admin status --run {run_id} "
            "--follow to watch it again)",
            code=EXIT_INTERRUPTED,
        ) from None
    print(json.dumps({"status": as_dict(final)}) if args.json else headline(final))
    return 0 if final.state == pb.RUN_STATE_COMPLETED else EXIT_FAILED


def _start_run(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    spec = args.spec  # validated before connecting
    started = stub.StartRun(pb.StartRunRequest(spec=spec.to_proto()), timeout=CALL_TIMEOUT_S)
    if args.json:  # following: every line is an object named by what it is
        print(json.dumps({"started": as_dict(started)}) if args.follow else as_json(started))
    else:
        print(f"run {started.run_id} started", flush=True)
    return _follow_to_end(stub, args, started.run_id) if args.follow else 0


def _status(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    status = stub.GetStatus(pb.StatusRequest(run_id=args.run), timeout=CALL_TIMEOUT_S)
    if args.follow and status.state not in _FINAL:
        return _follow_to_end(stub, args, status.run_id)
    print(as_json(status) if args.json else status_text(status))
    return 0


def _list_silos(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    silos = stub.ListSilos(pb.StatusRequest(), timeout=CALL_TIMEOUT_S)
    print(as_json(silos) if args.json else silo_table(silos.silos))
    return 0


def _runs(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    runs = stub.ListRuns(pb.StatusRequest(), timeout=CALL_TIMEOUT_S)
    print(as_json(runs) if args.json else runs_text(runs.runs))
    return 0


def _change(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    call = {"stop": stub.StopRun, "pause": stub.PauseRun, "resume": stub.ResumeRun}[args.command]
    status = call(pb.StopRequest(run_id=getattr(args, "run", "")), timeout=CALL_TIMEOUT_S)
    print(headline(status))
    return 0


def _silo_change(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    call = stub.RevokeSilo if args.command == "revoke" else stub.RotateSilo
    call(pb.SiloRequest(silo_id=args.silo, reason=getattr(args, "reason", "")), timeout=30)
    done = "revoked" if args.command == "revoke" else "will be pinned to the next key it shows"
    print(f"silo {args.silo} {done}")
    return 0


def _export(args: argparse.Namespace, stub: pb_grpc.AdminStub) -> int:
    try:
        header = export_adapter(stub, round_index=args.round, out=args.out, run_id=args.run)
    except OSError as exc:
        raise config_error(f"cannot write the adapter to {args.out}: {exc.strerror}") from None
    print(f"round {header.round} of run {header.run_id} written to {args.out}")
    return 0


def _add_connection(parser: argparse.ArgumentParser, *, again: bool) -> None:
    add_connection_arguments(parser, whose="the admin's", again=again)
    parser.add_argument(
        "--connect-wait",
        type=float,
        default=argparse.SUPPRESS if again else 10.0,
        metavar="SECONDS",
        help="how long to retry a coordinator that does not answer",
    )


def _command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    text: str,
    handler: Handler,
    *,
    reads: bool = False,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
    parser.set_defaults(handler=handler, json=False)
    if reads:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_connection(parser, again=True)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description=f"{__doc__}\nConnection options may come before or after the command.",
    )
    _add_connection(parser, again=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = _command(commands, "start-run", "start a run", _start_run, reads=True)
    add_flags(start)
    status = _command(commands, "status", "a run's state, progress and rounds", _status, reads=True)
    status.add_argument("--run", default="", metavar="ID", help="a kept run (default: current)")
    for follows in (start, status):
        follows.add_argument(
            "--follow", action="store_true", help="print a line per round until the run ends"
        )
    _command(commands, "runs", "every run kept by the coordinator", _runs, reads=True)
    _command(commands, "list-silos", "silos, connected or not, with notes", _list_silos, reads=True)
    _command(commands, "stop", "stop the run after its checkpointed rounds", _change)
    _command(commands, "pause", "hold the run after the open round", _change)
    resume = _command(commands, "resume", "go on with a paused or failed run", _change)
    resume.add_argument("--run", default="", metavar="ID", help="a failed run (default: current)")
    revoke = _command(commands, "revoke", "cut a silo off now (its certificate)", _silo_change)
    revoke.add_argument("--silo", required=True, help="the silo's name")
    revoke.add_argument("--reason", default="", help="kept with the revocation")
    rotate = _command(commands, "rotate", "accept the next key a silo presents", _silo_change)
    rotate.add_argument("--silo", required=True, help="the silo's name")
    export = _command(commands, "export", "write a round's adapter as a PEFT directory", _export)
    export.add_argument("--run", default="", metavar="ID", help="a kept run (default: current)")
    export.add_argument("--round", type=int, default=0, help="a kept round (0: the latest)")
    export.add_argument("--out", type=Path, required=True, help="directory to write")
    return parser


def _probe(channel: grpc.Channel, timeout_s: float) -> object:
    return pb_grpc.AdminStub(channel).GetStatus(pb.StatusRequest(), timeout=timeout_s)


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "start-run":
        args.spec = spec_from(args)
    connection = connection_of(args, default_coordinator="localhost:50051")
    check_credentials(connection.files, role=ROLE_ADMIN)
    wait_for_coordinator(
        connection,
        probe=_probe,
        retry=Retry(max_s=5.0, give_up_s=args.connect_wait),
        report=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True),
    )
    credentials = channel_credentials(connection.files)
    with grpc.secure_channel(connection.target, credentials, options=CHANNEL_OPTIONS) as channel:
        try:
            code: int = args.handler(args, pb_grpc.AdminStub(channel))
        except grpc.RpcError as exc:
            hint = (
                " (fedmllm-admin runs lists the kept runs)"
                if exc.code() == grpc.StatusCode.NOT_FOUND
                else ""
            )
            raise CliError(
                f"{args.command}: refused by the coordinator ({exc.code().name}): "
                f"{exc.details()}{hint}",
                code=_EXIT_OF.get(exc.code(), EXIT_FAILED),
            ) from None
    return code


def main(argv: list[str] | None = None) -> None:
    run_command(PROG, _main, argv_or_sys(argv))


if __name__ == "__main__":
    main()
