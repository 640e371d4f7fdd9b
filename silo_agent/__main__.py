"""`silo-agent`: train the federation's adapter on this silo's private data."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import grpc

from shared.cache import cache_dir
from shared.cli import (
    Parser,
    argv_or_sys,
    refused,
    run_command,
    usage_error,
)
from shared.connection import (
    Connection,
    Retry,
    add_connection_arguments,
    connection_of,
    wait_for_coordinator,
)
from shared.credentials import Identity, check_credentials
from shared.logs import add_log_arguments, configure_logging
from shared.pki.identity import ROLE_SILO
from shared.ports import check_port
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.options import (
    add_hardware_arguments,
    add_model_arguments,
    check_data_dir,
    check_device,
    check_hardware_flags,
    check_model_arguments,
    check_parser,
    init_adapter_parser,
)

PROG = "silo-agent"
# What the coordinator answers a silo it will not take at all: revoked, pinned to another key,
# a second agent with the same certificate.
_REFUSED = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS,
)
log = logging.getLogger("silo_agent")

DESCRIPTION = """\
Join a FedMLLM federation and train its LoRA adapter on local data. Raw data never leaves this
machine: only adapter deltas are sent.

commands:
  silo-agent --data DIR --model DIR ...          join the federation and train (options below)
  silo-agent check --data DIR --model DIR        prove locally, contacting no one, that this
                                                 silo can train (silo-agent check --help)
  silo-agent init-adapter --model DIR --out DIR  the initial adapter of a model that ships its
                                                 own code (docs/models.md)
"""


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=DESCRIPTION)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="silo data directory (train.jsonl, images; see docs/silo-data.md)",
    )
    add_connection_arguments(parser, whose="this silo's")
    add_model_arguments(parser)
    add_hardware_arguments(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); set it when agents share a host",
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="join only to evaluate: test.jsonl, no training"
    )
    parser.add_argument(
        "--judge-model",
        help="LLM judge for open Med-VQA answers (else token "
        "recall); your test questions and answers are sent to its endpoint",
    )
    parser.add_argument(
        "--judge-base-url",
        default="https://api.openai.com/v1",
        help="OpenAI-compatible endpoint of the judge",
    )
    parser.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key",
    )
    parser.add_argument(
        "--judge-cache",
        type=Path,
        default=cache_dir() / "judge.jsonl",
        help="verdict cache, so that a rerun costs nothing",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=-1,
        help="serve Prometheus /metrics on this port (-1: off)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics listens on (loopback unless a scraper is remote)",
    )
    parser.add_argument(
        "--metrics-tls-cert",
        type=Path,
        help="serve /metrics over TLS with this server certificate (PEM) for this host's name "
        "(a silo's federation certificate is for clients only)",
    )
    parser.add_argument(
        "--metrics-tls-key", type=Path, help="the private key of --metrics-tls-cert (PEM)"
    )
    parser.add_argument(
        "--metrics-client-ca",
        type=Path,
        help="over TLS, answer only scrapers with a certificate of this CA (default: --ca)",
    )
    add_log_arguments(parser)
    return parser


def _probe(channel: grpc.Channel, timeout_s: float) -> object:
    """A heartbeat of no session: answered to any silo certificate the coordinator admits."""
    return pb_grpc.SiloStub(channel).Heartbeat(pb.HeartbeatRequest(), timeout=timeout_s)


def _check_metrics(args: argparse.Namespace) -> None:
    if args.metrics_port >= 0:
        check_port(args.metrics_host, args.metrics_port, flag="--metrics-port")
    if (args.metrics_tls_cert is None) != (args.metrics_tls_key is None):
        raise usage_error("--metrics-tls-cert and --metrics-tls-key go together")
    given = {
        "--metrics-tls-cert": args.metrics_tls_cert,
        "--metrics-tls-key": args.metrics_tls_key,
        "--metrics-client-ca": args.metrics_client_ca,
    }
    for flag, path in given.items():
        if path is not None and not path.is_file():
            raise usage_error(f"{flag} {path}: no such file")


def _check(args: argparse.Namespace) -> tuple[Connection, Identity]:
    """What can be checked before the model loads, in the order an operator would fix it."""
    if args.threads < 0:
        raise usage_error(f"--threads must be 0 or more, not {args.threads}")
    _check_metrics(args)
    connection = connection_of(args)
    identity = check_credentials(connection.files, role=ROLE_SILO)
    check_data_dir(args.data)
    check_model_arguments(args)
    check_device(args.device)
    return connection, identity


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    check_hardware_flags(args)
    connection, identity = _check(args)
    configure_logging(
        level=args.log_level,
        log_format=args.log_format,
        role="silo",
        name=identity.name,
    )
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        from silo_agent.distributed import start_processes

        start_processes(args, argv)  # this command as N processes under torchrun; exits
    wait_for_coordinator(connection, probe=_probe, retry=Retry(), report=log.warning)
    from silo_agent.session import serve  # torch and the model: once the coordinator answers

    try:
        return serve(args, connection)
    except grpc.RpcError as exc:
        if exc.code() not in _REFUSED:
            raise
        raise refused(f"refused by the coordinator ({exc.code().name}): {exc.details()}") from None


def _subcommand(name: str, argv: list[str]) -> None:
    """`silo-agent check` and `silo-agent init-adapter`: parsed before their model code loads."""
    parser = check_parser() if name == "check" else init_adapter_parser()

    def command(arguments: list[str]) -> int:
        args = parser.parse_args(arguments)
        configure_logging(level="WARNING", log_format="text", role=name)
        check_model_arguments(args)
        if name == "check":
            check_data_dir(args.data)
            check_device(args.device)
            from silo_agent.check import main as check  # the local check needs no gRPC or TLS

            return check(args)
        from silo_agent.init_adapter import main as init_adapter

        return init_adapter(args)

    run_command(f"{PROG} {name}", command, argv)


def main(argv: list[str] | None = None) -> None:
    arguments = argv_or_sys(argv)
    if arguments[:1] in (["check"], ["init-adapter"]):
        _subcommand(arguments[0], arguments[1:])
    else:
        run_command(PROG, _main, arguments)


if __name__ == "__main__":
    main()
