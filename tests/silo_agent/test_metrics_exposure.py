"""A silo's /metrics: on loopback unless asked, labelled with the silo's identity, and over
TLS answered only to scrapers holding a certificate of the federation's CA."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shared.connection import connection_of
from silo_agent.__main__ import _parser, main
from silo_agent.session import _metrics
from tests.conftest import tls
from tests.helpers import metrics_over_tls_only, scrape


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _outward_address() -> str | None:
    """This host's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def _started(certs: Path, tmp_path: Path, *extra: str) -> int:
    files = tls(certs, "silo-1")
    port = _free_port()
    argv = ["--data", str(tmp_path), "--model", str(tmp_path), "--coordinator", "localhost:1"]
    argv += ["--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]
    args = _parser().parse_args([*argv, "--metrics-port", str(port), *extra])
    _metrics(args, connection_of(args))
    return port


def test_silo_metrics_listen_on_loopback_and_name_the_silo(certs: Path, tmp_path: Path) -> None:
    port = _started(certs, tmp_path)
    assert 'silo="silo-1"' in scrape(f"http://127.0.0.1:{port}/metrics")
    outward = _outward_address()
    if outward is None:
        pytest.skip("this host has no address besides loopback to probe")
    with pytest.raises(OSError):
        scrape(f"http://{outward}:{port}/metrics")


def test_silo_metrics_over_tls_answer_federation_certificates_only(
    certs: Path, tmp_path: Path
) -> None:
    # a server certificate for this host's name ("localhost"): the coordinator's serves here
    server = tls(certs, "coordinator")
    port = _started(
        certs,
        tmp_path,
        "--metrics-tls-cert",
        str(server.cert),
        "--metrics-tls-key",
        str(server.key),
    )
    assert 'silo="silo-1"' in metrics_over_tls_only(port, tls(certs, "admin"))


def test_a_metrics_certificate_without_its_key_is_a_usage_error(
    certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = tls(certs, "silo-1")
    argv = ["--data", str(tmp_path), "--model", str(tmp_path), "--coordinator", "localhost:1"]
    argv += ["--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]
    with pytest.raises(SystemExit) as ended:
        main([*argv, "--metrics-tls-cert", str(files.cert)])
    assert ended.value.code == 2
    assert capsys.readouterr().err.endswith(
        "--metrics-tls-cert and --metrics-tls-key go together\n"
    )
