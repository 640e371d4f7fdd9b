"""What the admin sends back to a silo or admin: its certificate, the CA and where to connect."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shared.errors import CertificateError
from shared.pki.authority import hosts_of
from shared.pki.files import PUBLIC, write_atomic
from shared.pki.fingerprint import load_certificate
from shared.pki.identity import ROLE_ADMIN, ROLE_COORDINATOR, ROLE_SILO

ADDRESS_FILE = "coordinator-address"
DEFAULT_PORT = 50051
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}")


def coordinator_address(ca_dir: Path, given: str | None) -> str:
    """`given` once checked, else the first SAN of the coordinator's certificate at port 50051."""
    if given is not None:
        if not _ADDRESS.fullmatch(given):
            raise CertificateError(
                f"--coordinator-address {given!r} is not HOST:PORT "
                "(e.g. coordinator.example.org:50051)"
            )
        return given
    cert_path = ca_dir / f"{ROLE_COORDINATOR}.pem"
    hosts = hosts_of(load_certificate(cert_path.read_bytes())) if cert_path.is_file() else []
    if not hosts:
        raise CertificateError(
            f"{ca_dir}: no coordinator certificate to take its address from; "
            "pass --coordinator-address HOST:PORT"
        )
    host = f"[{hosts[0]}]" if ":" in hosts[0] else hosts[0]
    return f"{host}:{DEFAULT_PORT}"


@dataclass(frozen=True)
class Bundle:
    """A recipient's bundle directory: `<name>.pem`, `ca.pem` and `coordinator-address`."""

    directory: Path
    name: str
    role: str
    address: str

    def write(self, *, cert_pem: bytes, ca_pem: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / f"{self.name}.pem", cert_pem, mode=PUBLIC)
        write_atomic(self.directory / "ca.pem", ca_pem, mode=PUBLIC)
        write_atomic(self.directory / ADDRESS_FILE, f"{self.address}\n".encode(), mode=PUBLIC)

    def next_step(self) -> str:
        """One line: what to send, and what the recipient runs with it."""
        tls = f"--cert {self.name}.pem --key {self.name}.key --ca ca.pem"
        command = {
            ROLE_SILO: f"silo-agent --coordinator {self.address} {tls} --data DIR --model DIR",
            ROLE_ADMIN: f"fedmllm-admin --coordinator {self.address} {tls} status",
            ROLE_COORDINATOR: f"fedmllm-coordinator {tls} ... (restart it)",
        }[self.role]
        return (
            f"next: send {self.directory}/ to {self.name}, who puts its files beside "
            f"{self.name}.key and runs: {command}"
        )
