"""Every way an operator can start a command wrongly ends in one line that names the problem
and its fix, with the exit code docs/deploy.md §4 documents (2 usage, 3 refused, 4
configuration), never a traceback: each case runs the installed command as a process."""

from __future__ import annotations

import fcntl
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.demo.federation import tls_args
from tests.cli.commands import run


@dataclass(frozen=True)
class Site:
    certs: Path
    model: Path
    data: Path
    tmp: Path

    def coordinator(self, *extra: str, name: str = "coordinator") -> list[str]:
        return [
            "--model",
            str(self.model),
            "--checkpoint-dir",
            str(self.tmp / "ckpt"),
            *tls_args(self.certs, name),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            *extra,
        ]

    def silo(self, *extra: str, name: str = "silo-1") -> list[str]:
        return [
            "--data",
            str(self.data),
            "--model",
            str(self.model),
            "--coordinator",
            "127.0.0.1:1",
            *tls_args(self.certs, name),
            *extra,
        ]

    def admin(self, *argv: str) -> list[str]:
        return [*argv, "--coordinator", "127.0.0.1:1", *tls_args(self.certs, "admin")]


Setup = Callable[[Site], AbstractContextManager[object]]


@dataclass(frozen=True)
class Case:
    command: str
    argv: Callable[[Site], list[str]]
    code: int
    says: str
    setup: Setup = field(default=lambda site: nullcontext())


def _swap(argv: list[str], flag: str, value: str) -> list[str]:
    at = argv.index(flag)
    return [*argv[: at + 1], value, *argv[at + 2 :]]


@contextmanager
def _locked_checkpoints(site: Site) -> Iterator[object]:
    (site.tmp / "ckpt").mkdir()
    with (site.tmp / "ckpt" / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running coordinator holds it
        yield handle


@contextmanager
def _listening(site: Site) -> Iterator[object]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        (site.tmp / "taken").write_text(str(taken.getsockname()[1]))
        yield taken


def _taken(site: Site) -> str:
    return (site.tmp / "taken").read_text()


def _file(site: Site, name: str, text: str) -> str:
    (site.tmp / name).write_text(text)
    return str(site.tmp / name)


def _adapter_dir(site: Site) -> str:
    (site.tmp / "adapter_model.safetensors").write_bytes(b"")
    return str(site.tmp)


COORDINATOR = "fedmllm-coordinator"
SILO = "silo-agent"
ADMIN = "fedmllm-admin"
CASES = {
    "model dir absent": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--model", "/nowhere"),
        4,
        "--model /nowhere is not a directory",
    ),
    "model dir without config.json": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--model", str(s.tmp)),
        4,
        "has no config.json",
    ),
    "certificate file missing": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--cert", "/nowhere.pem"),
        4,
        "certificate /nowhere.pem not found: pass --cert",
    ),
    "key file missing": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--key", "/nowhere.key"),
        4,
        "private key /nowhere.key not found",
    ),
    "key of another certificate": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--key", str(s.certs / "silo-1.key")),
        4,
        "does not belong to certificate",
    ),
    "an admin certificate for the coordinator": Case(
        COORDINATOR, lambda s: s.coordinator(name="admin"), 4, "needs a coordinator certificate"
    ),
    "checkpoint dir not writable": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--checkpoint-dir", str(s.certs / "ca.pem" / "ckpt")),
        4,
        "cannot create or write --checkpoint-dir",
    ),
    "checkpoint dir held by another coordinator": Case(
        COORDINATOR,
        lambda s: s.coordinator(),
        4,
        "is in use by another coordinator",
        _locked_checkpoints,
    ),
    "gRPC port in use": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--port", _taken(s)),
        4,
        "is in use on 127.0.0.1 by another process",
        _listening,
    ),
    "metrics port in use": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator(), "--metrics-port", _taken(s)),
        4,
        "or choose another --metrics-port",
        _listening,
    ),
    "log level in lower case": Case(
        COORDINATOR,
        lambda s: _swap(s.coordinator("--log-level", "debug"), "--model", "/nowhere"),
        4,
        "/nowhere",
    ),
    "unknown log level": Case(
        COORDINATOR,
        lambda s: s.coordinator("--log-level", "verbose"),
        2,
        "'verbose' is not one of debug, info",
    ),
    "no checkpoints kept": Case(
        COORDINATOR,
        lambda s: s.coordinator("--keep-checkpoints", "0"),
        2,
        "--keep-checkpoints must be at least 1",
    ),
    "silo key missing": Case(
        SILO,
        lambda s: _swap(s.silo(), "--key", "/nowhere.key"),
        4,
        "private key /nowhere.key not found",
    ),
    "silo key of another certificate": Case(
        SILO,
        lambda s: _swap(s.silo(), "--key", str(s.certs / "silo-2.key")),
        4,
        "does not belong to certificate",
    ),
    "silo certificate not PEM": Case(
        SILO,
        lambda s: _swap(s.silo(), "--cert", _file(s, "x.pem", "not a certificate")),
        4,
        "is not a PEM certificate",
    ),
    "silo certificate of an admin": Case(
        SILO, lambda s: s.silo(name="admin"), 4, "needs a silo certificate"
    ),
    "silo without a certificate": Case(
        SILO,
        lambda s: ["--data", str(s.data), "--model", str(s.model), "--coordinator", "x:1"],
        2,
        "no --cert given: pass --cert, set FEDMLLM_CERT",
    ),
    "silo data dir absent": Case(
        SILO,
        lambda s: _swap(s.silo(), "--data", "/nowhere"),
        4,
        "--data /nowhere is not a directory",
    ),
    "silo model without config.json": Case(
        SILO, lambda s: _swap(s.silo(), "--model", str(s.tmp)), 4, "has no config.json"
    ),
    "--device cuda on a CPU build": Case(
        SILO,
        lambda s: s.silo("--device", "cuda"),
        4,
        "is a CPU build; install PyTorch's CUDA build",
    ),
    "unknown device": Case(SILO, lambda s: s.silo("--device", "tpu"), 2, "--device 'tpu' is not"),
    "negative threads": Case(
        SILO, lambda s: s.silo("--threads", "-1"), 2, "--threads must be 0 or more"
    ),
    "coordinator address without a port": Case(
        SILO,
        lambda s: _swap(s.silo(), "--coordinator", "coordinator.example.org"),
        2,
        "is not HOST:PORT",
    ),
    "silo-agent check without data": Case(
        SILO,
        lambda s: ["check", "--data", str(s.tmp), "--model", str(s.model)],
        4,
        "has neither train.jsonl nor test.jsonl",
    ),
    "--rounds 99999999999": Case(
        ADMIN,
        lambda s: s.admin("start-run", "--rounds", "99999999999"),
        2,
        "rounds must be >= 1 and <= 100000",
    ),
    "--mu nan": Case(
        ADMIN, lambda s: s.admin("start-run", "--mu", "nan"), 2, "must be a finite number"
    ),
    "--seed 1e15": Case(
        ADMIN, lambda s: s.admin("start-run", "--seed", "1e15"), 2, "seed must be an integer"
    ),
    "rounds: three": Case(
        ADMIN,
        lambda s: s.admin("start-run", "--config", _file(s, "r.yaml", "rounds: three\n")),
        2,
        "r.yaml: rounds must be an integer (got 'three')",
    ),
    "learning_rate: 1e-3 is a number": Case(
        ADMIN,
        lambda s: s.admin(
            "start-run", "--config", _file(s, "r.yaml", "learning_rate: 1e-3\nrounds: 0\n")
        ),
        2,
        "r.yaml: rounds must be >= 1",
    ),
    "unknown command": Case(ADMIN, lambda s: s.admin("shutdown"), 2, "invalid choice: 'shutdown'"),
    "admin key missing": Case(
        ADMIN,
        lambda s: _swap(s.admin("status"), "--key", "/nowhere.key"),
        4,
        "private key /nowhere.key not found",
    ),
    "predict without an adapter": Case(
        "fedmllm-predict",
        lambda s: ["--model", str(s.model), "--adapter", str(s.tmp), "--data", str(s.data)],
        4,
        "has no adapter_config.json (fedmllm-admin export)",
    ),
    "init-adapter over an adapter": Case(
        SILO,
        lambda s: ["init-adapter", "--model", str(s.model), "--out", _adapter_dir(s)],
        2,
        "already holds an adapter; choose a new --out",
    ),
    "reserved certificate name": Case(
        "fedmllm-certs",
        lambda s: ["--out", str(s.tmp / "pki"), "--silos", "ca"],
        4,
        "'ca' is reserved",
    ),
}


@pytest.fixture
def site(certs: Path, tiny_model: Path, silo_data: dict[str, Path], tmp_path: Path) -> Site:
    return Site(certs=certs, model=tiny_model, data=silo_data["silo-1"], tmp=tmp_path)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_one_line_and_the_documented_exit_code(case: Case, site: Site) -> None:
    with ExitStack() as held:
        held.enter_context(case.setup(site))
        ran = run(case.command, *case.argv(site))
    assert ran.code == case.code, ran.err
    line = ran.one_line()
    assert line.startswith(case.command) and case.says in line, line
