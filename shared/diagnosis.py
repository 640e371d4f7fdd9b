"""Why a coordinator cannot be used, found by probing it once: unreachable, a certificate for
another host name, another CA, this certificate refused, revoked or of an incompatible model."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from cryptography import x509

from shared.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_REFUSED, usage_error
from shared.grpc_options import CHANNEL_OPTIONS
from shared.pki.authority import hosts_of
from shared.tls import TlsFiles, channel_credentials

# One gRPC call that any coordinator answers cheaply for this caller's role.
Probe = Callable[[grpc.Channel, float], object]

# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers it, or sends
# the TLS alert that says why it refused the client's certificate.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_NAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_EXPIRED = {9, 10}  # not yet valid, expired
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


@dataclass(frozen=True)
class Finding:
    """What one probe found: ok, a transient problem (code 1), or a permanent one (3 or 4)."""

    message: str = ""
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def permanent(self) -> bool:
        return self.code not in (0, EXIT_FAILED)


def split_target(target: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT; a usage error otherwise."""
    host, _, port = target.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise usage_error(f"coordinator address {target!r} is not HOST:PORT")
    return host, int(port)


def diagnose(target: str, files: TlsFiles, *, probe: Probe, timeout_s: float = 5.0) -> Finding:
    """Probe the coordinator at `target` once: TCP, then TLS both ways, then one gRPC call."""
    host, port = split_target(target)
    for attempt in (1, 2):
        sock = _connect(host, port, target, timeout_s)
        if isinstance(sock, Finding):
            return sock
        with sock:
            finding = _handshake(sock, host, target, files, timeout_s)
        if finding is not None:
            return finding if not finding.ok else _call(target, files, probe, timeout_s)
        if attempt == 1:
            time.sleep(1.0)  # a coordinator shutting down also closes: look once more
    return Finding(
        f"the coordinator at {target} closes the connection right after the TLS handshake: it "
        f"does not accept {files.cert} (not issued by the CA it trusts); ask the federation's "
        "admin for a certificate of this federation",
        EXIT_REFUSED,
    )


def _connect(host: str, port: int, target: str, timeout_s: float) -> socket.socket | Finding:
    try:
        return socket.create_connection((host, port), timeout=timeout_s)
    except socket.gaierror as exc:
        return Finding(f"cannot resolve {host!r} ({exc.strerror}): check the address", EXIT_FAILED)
    except ConnectionRefusedError:
        return Finding(
            f"nothing listens at {target} (connection refused): is fedmllm-coordinator running "
            "there, on that port?",
            EXIT_FAILED,
        )
    except TimeoutError:
        return Finding(
            f"no answer from {target} within {timeout_s:.0f} s: the host is down, or a "
            "firewall drops the port",
            EXIT_FAILED,
        )
    except OSError as exc:
        return Finding(f"cannot reach {target}: {exc.strerror or exc}", EXIT_FAILED)


def _context(files: TlsFiles, *, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca))
    if not verify:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    return context


def _handshake(
    sock: socket.socket, host: str, target: str, files: TlsFiles, timeout_s: float
) -> Finding | None:
    """What the handshake found; None when the server closed right after it (a gRPC server
    does so, without an alert, to a client certificate it does not trust)."""
    try:
        with _context(files, verify=True).wrap_socket(sock, server_hostname=host) as tls:
            tls.sendall(_H2_PREFACE)
            return Finding() if tls.recv(1) else None
    except ssl.SSLCertVerificationError as exc:
        return _server_certificate(exc, host, target, files, timeout_s)
    except ssl.SSLError as exc:
        if "ALERT" in (exc.reason or ""):
            return Finding(
                f"the coordinator at {target} refused this certificate in the TLS handshake "
                f"({exc.reason}): {files.cert} is not from the CA it trusts; ask the "
                "federation's admin for a certificate of this federation",
                EXIT_REFUSED,
            )
        return Finding(
            f"{target} does not speak TLS as a coordinator does ({exc.reason}): is it the "
            "coordinator's gRPC port (not /metrics)?",
            EXIT_CONFIG,
        )
    except (TimeoutError, ConnectionError) as exc:
        return Finding(f"TLS handshake with {target} failed: {exc}", EXIT_FAILED)


def _server_certificate(
    exc: ssl.SSLCertVerificationError, host: str, target: str, files: TlsFiles, timeout_s: float
) -> Finding:
    """Name what is wrong with the coordinator's certificate, as it presents it."""
    cert = _presented(host, target, files, timeout_s)
    if exc.verify_code in _NAME_MISMATCH:
        names = hosts_of(cert) if cert is not None else []
        return Finding(
            f"the coordinator's certificate is not valid for {host!r}; it names "
            f"{', '.join(names) or 'no host'}: connect to one of those, or have the admin "
            f"re-issue it with fedmllm-certs init --ca-dir PKI --hosts {','.join([*names, host])}",
            EXIT_CONFIG,
        )
    if exc.verify_code in _EXPIRED:
        return Finding(
            f"the coordinator's certificate is not valid now ({exc.verify_message}); its admin "
            "must renew it, or this host's clock is wrong",
            EXIT_FAILED,
        )
    issuer = cert.issuer.rfc4514_string() if cert is not None else "unknown"
    return Finding(
        f"the coordinator at {target} presents a certificate from another CA (issuer "
        f"{issuer!r}; {exc.verify_message}): {files.ca} must be the ca.pem of this federation, "
        "from the bundle its admin sent",
        EXIT_CONFIG,
    )


def _presented(
    host: str, target: str, files: TlsFiles, timeout_s: float
) -> x509.Certificate | None:
    """The coordinator's certificate, fetched without verifying it (to describe it only)."""
    try:
        with (
            socket.create_connection(split_target(target), timeout=timeout_s) as sock,
            _context(files, verify=False).wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _call(target: str, files: TlsFiles, probe: Probe, timeout_s: float) -> Finding:
    credentials = channel_credentials(files)
    with grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS) as channel:
        try:
            probe(channel, timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in _TRANSIENT:
                return Finding(f"the coordinator did not answer ({code.name}: {details})", 1)
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return Finding(f"{target} is not a FedMLLM coordinator ({details})", EXIT_CONFIG)
            return Finding(f"refused by the coordinator ({code.name}): {details}", EXIT_REFUSED)
    return Finding()
