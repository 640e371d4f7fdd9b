"""`fedmllm-coordinator`: the long-running coordinator process."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import threading
from pathlib import Path

from coordinator.preflight import check_adapter_dir, check_checkpoint_dir, check_model_dir
from shared.cli import Parser, argv_or_sys, config_error, run_command, usage_error
from shared.credentials import check_credentials
from shared.logs import add_log_arguments, configure_logging
from shared.pki.identity import ROLE_COORDINATOR
from shared.ports import check_port, port_problem
from shared.tls import add_tls_arguments, tls_files

PROG = "fedmllm-coordinator"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Serve a federation over mutual TLS. Start runs with fedmllm-admin.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="base model directory (only config.json is read, never weights)",
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        help="PEFT adapter directory to start runs from (default: a fresh one)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        required=True,
        help="per-round checkpoints; an unfinished run there is resumed",
    )
    add_tls_arguments(parser, whose="the coordinator's")
    parser.add_argument("--host", default="[::]", help="listen address")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    parser.add_argument(
        "--metrics-port", type=int, default=9464, help="Prometheus /metrics port (-1 disables)"
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics listens on (loopback unless a scraper is remote)",
    )
    parser.add_argument(
        "--metrics-tls",
        action="store_true",
        help="serve /metrics over TLS with this coordinator's certificate; scrapers need a "
        "certificate of the federation's CA",
    )
    parser.add_argument("--crl", type=Path, help="a CRL file to honour (fedmllm-certs revoke)")
    parser.add_argument(
        "--abandon-run",
        action="store_true",
        help="stop an unfinished run that was started with another base model or adapter "
        "(instead of refusing to start)",
    )
    parser.add_argument(
        "--keep-checkpoints", type=int, default=5, help="round checkpoints kept per run"
    )
    parser.add_argument(
        "--port-file", type=Path, help="write the bound gRPC and metrics ports here once serving"
    )
    add_log_arguments(parser)
    return parser


def _preflight(args: argparse.Namespace) -> None:
    """Every check that needs no model code: a wrong path fails in a second, in one line."""
    check_model_dir(args.model)
    if args.adapter is not None:
        check_adapter_dir(args.adapter)
    check_credentials(tls_files(args), role=ROLE_COORDINATOR)
    if args.crl is not None and not args.crl.is_file():
        raise config_error(f"--crl {args.crl} not found: pass the crl.pem of fedmllm-certs revoke")
    if args.keep_checkpoints < 1:
        raise usage_error(f"--keep-checkpoints must be at least 1, not {args.keep_checkpoints}")
    check_checkpoint_dir(args.checkpoint_dir)
    check_port(args.host, args.port, flag="--port")
    if args.metrics_port >= 0:
        check_port(args.metrics_host, args.metrics_port, flag="--metrics-port")


def _serve(args: argparse.Namespace, stop: threading.Event) -> None:
    from coordinator.base_model import RunMismatch  # model code: loaded once the checks pass
    from coordinator.server import CoordinatorConfig, serve
    from shared.adapter import RemoteCodeRequired

    config = CoordinatorConfig(
        model_dir=args.model,
        checkpoint_dir=args.checkpoint_dir,
        adapter_dir=args.adapter,
        tls=tls_files(args),
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.metrics_host,
        metrics_tls=args.metrics_tls,
        crl=args.crl,
        abandon_run=args.abandon_run,
        keep_checkpoints=args.keep_checkpoints,
    )
    try:
        with serve(config) as running:
            if args.port_file is not None:
                tmp = args.port_file.with_suffix(".tmp")
                tmp.write_text(f"{running.port} {running.metrics_port or 0}\n")
                tmp.replace(args.port_file)
            stop.wait()
            logging.getLogger("coordinator").info("shutting down")
    except (RunMismatch, RemoteCodeRequired) as exc:
        raise config_error(str(exc)) from None
    except OSError as exc:
        raise config_error(_serve_problem(exc, args)) from None


def _serve_problem(exc: OSError, args: argparse.Namespace) -> str:
    """A port taken between the checks and the bind, or another file the coordinator needs."""
    if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return port_problem(exc, args.host, args.port, flag="--port or --metrics-port")
    if exc.errno is None and str(exc).startswith("cannot listen"):
        return f"{exc}: is --port {args.port} taken, or --host not an address of this machine?"
    return str(exc)


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging(level=args.log_level, log_format=args.log_format, role="coordinator")
    _preflight(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _serve(args, stop)
    return 0


def main(argv: list[str] | None = None) -> None:
    run_command(PROG, _main, argv_or_sys(argv))


if __name__ == "__main__":
    main()
