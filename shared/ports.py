"""Whether a command can listen where it is told to, said in one line with the fix."""

from __future__ import annotations

import errno
import socket

from shared.cli import config_error


def check_port(host: str, port: int, *, flag: str) -> None:
    """Whether this process could listen at host:port (0: any port; always possible)."""
    if port == 0:
        return
    if not 0 < port < 65536:
        raise config_error(f"{flag} {port} is not a TCP port (1-65535, or 0 for any free port)")
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as exc:
        raise config_error(port_problem(exc, host, port, flag=flag)) from None


def port_problem(exc: OSError, host: str, port: int, *, flag: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{flag} {port} is in use on {host} by another process: stop it (`ss -ltnp "
            f"'sport = :{port}'` names it) or choose another {flag}"
        )
    if exc.errno == errno.EACCES:
        return f"{flag} {port}: ports below 1024 need privileges; choose a port above 1023"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}: not an address of this machine (check --host)"
    return f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}"
