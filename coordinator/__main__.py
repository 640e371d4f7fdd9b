"""`fedmllm-coordinator`: the long-running coordinator process."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from coordinator.server import CoordinatorConfig, serve
from shared.tls import add_tls_arguments, tls_files


def parse_args(argv: list[str] | None) -> tuple[CoordinatorConfig, Path | None]:
    parser = argparse.ArgumentParser(
        prog="fedmllm-coordinator",
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
        help="address /metrics listens on (default loopback; a remote scraper needs its address)",
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
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s coordinator %(name)s: %(message)s"
    )
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
    return config, args.port_file


def main(argv: list[str] | None = None) -> None:
    config, port_file = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with serve(config) as running:
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(f"{running.port} {running.metrics_port or 0}\n")
            tmp.replace(port_file)
        stop.wait()
        logging.getLogger("coordinator").info("shutting down")


if __name__ == "__main__":
    main()
