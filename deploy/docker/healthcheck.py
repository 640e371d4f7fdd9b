"""Container health check: exit 0 while the FedMLLM process answers on its ports, else 1."""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def _problems(metrics: str | None, tcp: list[str], timeout: float) -> list[str]:
    found = []
    if metrics:
        try:
            with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=timeout) as reply:
                if b"fedmllm_" not in reply.read():
                    found.append(f"http://{metrics}/metrics serves no fedmllm_ series")
        except OSError as exc:
            found.append(f"http://{metrics}/metrics does not answer: {exc}")
    for target in tcp:
        try:
            socket.create_connection(_address(target), timeout=timeout).close()
        except OSError as exc:
            found.append(f"{target} accepts no connection: {exc}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedmllm-healthcheck",
        description="Exit 0 when the FedMLLM process in this container answers, 1 otherwise.",
    )
    parser.add_argument("--metrics", metavar="HOST:PORT", help="a /metrics endpoint to read")
    parser.add_argument(
        "--tcp", metavar="HOST:PORT", action="append", default=[], help="a port to connect to"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per probe")
    args = parser.parse_args(argv)
    problems = _problems(args.metrics, args.tcp, args.timeout)
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
