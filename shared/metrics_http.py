"""Prometheus /metrics on an address of the operator's choosing, optionally over mutual TLS."""

from __future__ import annotations

from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from shared.tls import TlsFiles


def serve_metrics(
    registry: CollectorRegistry, *, port: int, host: str, tls: TlsFiles | None
) -> WSGIServer:
    """Serve `registry` at http(s)://host:port/metrics. With `tls`, the endpoint presents its
    certificate (one made for serving: the scraper checks it like any HTTPS server's) and
    answers only scrapers holding a certificate signed by its CA."""
    options: dict[str, Any] = {}
    if tls is not None:
        options = {
            "certfile": str(tls.cert),
            "keyfile": str(tls.key),
            "client_cafile": str(tls.ca),
            "client_auth_required": True,
        }
    server, _ = start_http_server(port, addr=host.strip("[]"), registry=registry, **options)
    return server
