"""Where the coordinator is and which files authenticate this party: flags, else environment
variables, else a profile (a bundle directory from `fedmllm-certs sign`, or a YAML file); and
waiting for the coordinator until it answers or refuses for good."""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.cli import CliError, config_error, usage_error
from shared.diagnosis import Probe, diagnose
from shared.tls import TlsFiles

ENVIRONMENT = {
    "coordinator": "FEDMLLM_COORDINATOR",
    "cert": "FEDMLLM_CERT",
    "key": "FEDMLLM_KEY",
    "ca": "FEDMLLM_CA",
    "profile": "FEDMLLM_PROFILE",
}
ADDRESS_FILE = "coordinator-address"  # written into every bundle by fedmllm-certs sign


def add_connection_arguments(
    parser: argparse.ArgumentParser, *, whose: str, again: bool = False
) -> None:
    """--coordinator, --cert, --key, --ca and --profile. `again`: on a subcommand, where they
    override what was given before it only when given."""
    default = argparse.SUPPRESS if again else None
    texts = {
        "coordinator": "the coordinator's HOST:PORT",
        "cert": f"{whose} certificate (PEM)",
        "key": f"{whose} private key (PEM)",
        "ca": "the federation's CA certificate (PEM)",
        "profile": "a bundle directory from fedmllm-certs sign (coordinator-address, NAME.pem, "
        "NAME.key, ca.pem) or a YAML file with coordinator, cert, key and ca",
    }
    for name, text in texts.items():
        parser.add_argument(
            f"--{name}",
            default=default,
            type=str if name == "coordinator" else Path,
            metavar="HOST:PORT" if name == "coordinator" else "PATH",
            help=f"{text} (else ${ENVIRONMENT[name]})",
        )


@dataclass(frozen=True)
class Connection:
    target: str  # HOST:PORT
    files: TlsFiles


def connection_of(args: argparse.Namespace, *, default_coordinator: str = "") -> Connection:
    """Each setting from its flag, else its environment variable, else the profile."""
    given = {name: getattr(args, name, None) for name in ENVIRONMENT}
    values: dict[str, str | Path | None] = {
        name: given[name] or os.environ.get(variable) or None
        for name, variable in ENVIRONMENT.items()
    }
    profile = values.pop("profile")
    if profile is not None:
        for name, kept in read_profile(Path(profile)).items():
            values[name] = values[name] or kept
    values["coordinator"] = values["coordinator"] or default_coordinator or None
    found: dict[str, str] = {}
    for name, setting in values.items():
        if setting is None:
            raise usage_error(
                f"no --{name} given: pass --{name}, set {ENVIRONMENT[name]}, or name a profile "
                "with --profile (a bundle directory from fedmllm-certs sign)"
            )
        found[name] = str(setting)
    return Connection(
        target=found["coordinator"],
        files=TlsFiles(cert=Path(found["cert"]), key=Path(found["key"]), ca=Path(found["ca"])),
    )


def read_profile(path: Path) -> dict[str, str | Path]:
    """A bundle directory, or a YAML mapping whose relative paths start at its directory."""
    if path.is_dir():
        return _bundle(path)
    import yaml  # only a profile file needs it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise config_error(f"profile {path}: cannot read it ({exc})") from None
    known = ("coordinator", "cert", "key", "ca")
    if not isinstance(data, dict) or set(data) - set(known):
        raise config_error(f"profile {path}: a mapping of {', '.join(known)} is expected")
    return {
        k: (str(v) if k == "coordinator" else path.parent / str(v)) for k, v in data.items() if v
    }


def _bundle(directory: Path) -> dict[str, str | Path]:
    certificates = sorted(p for p in directory.glob("*.pem") if p.name != "ca.pem")
    if len(certificates) != 1:
        raise config_error(
            f"profile {directory}: expected one NAME.pem beside ca.pem, found "
            f"{len(certificates)}; pass --cert"
        )
    found: dict[str, str | Path] = {
        "cert": certificates[0],
        "key": certificates[0].with_suffix(".key"),
        "ca": directory / "ca.pem",
    }
    address = directory / ADDRESS_FILE
    if address.is_file():
        found["coordinator"] = address.read_text().strip()
    return found


@dataclass(frozen=True)
class Retry:
    """Waiting for a coordinator that is away: delays doubling from `initial_s` to `max_s`,
    giving up after `give_up_s` (None: until stopped)."""

    initial_s: float = 1.0
    max_s: float = 60.0
    give_up_s: float | None = None
    timeout_s: float = 5.0  # each probe's


def wait_for_coordinator(
    connection: Connection,
    *,
    probe: Probe,
    retry: Retry,
    report: Callable[[str], None],
    stop: threading.Event | None = None,
) -> bool:
    """True once the coordinator answers `probe`; False if stopped first. A permanent problem
    raises its CliError (exit 3 or 4); a transient one is reported once per attempt."""
    started, delay, attempt = time.monotonic(), retry.initial_s, 1
    while True:
        finding = diagnose(
            connection.target, connection.files, probe=probe, timeout_s=retry.timeout_s
        )
        if finding.ok:
            return True
        if finding.permanent:
            raise CliError(finding.message, code=finding.code)
        elapsed = time.monotonic() - started
        if retry.give_up_s is not None and elapsed + delay > retry.give_up_s:
            raise CliError(f"{finding.message} (attempt {attempt}, giving up)", code=finding.code)
        report(f"{finding.message} (attempt {attempt}; next in {delay:.0f} s)")
        if (stop or threading.Event()).wait(delay):
            return False
        delay, attempt = min(delay * 2, retry.max_s), attempt + 1
