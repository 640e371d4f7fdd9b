"""Read the shipped systemd units and their environment files as systemd would."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.deploy.packaging import ROOT

SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = {"fedmllm-coordinator.service": "coordinator.env", "fedmllm-silo.service": "silo.env"}


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value assigned to it, in order (continuation lines joined)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value.strip())
    return settings


def environment_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def exec_start(unit: str) -> list[str]:
    """ExecStart= of `unit` expanded with its shipped environment file: `${X}` is one word,
    a lone `$X` is split at whitespace, as systemd.service(5) describes."""
    settings = unit_settings((SYSTEMD / unit).read_text())
    environment = environment_file(SYSTEMD / UNITS[unit])
    for assignment in settings.get("Service.Environment", []):
        environment.update(word.split("=", 1) for word in shlex.split(assignment))
    (line,) = settings["Service.ExecStart"]
    words: list[str] = []
    for word in shlex.split(line):
        if re.fullmatch(r"\$\w+", word):
            words += environment[word[1:]].split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], word))
    return words


def _expand(name: str, analyze: str) -> set[str]:
    """A system call or `@group`, as `systemd-analyze syscall-filter` lists it, nested groups
    included."""
    if not name.startswith("@"):
        return {name}
    listing = subprocess.run(
        [analyze, "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            calls |= _expand(word, analyze)
    return calls


def allowed_system_calls(unit: str, analyze: str) -> set[str]:
    """The allow-list SystemCallFilter= lines of `unit` leave: `~` lines take calls away."""
    allowed: set[str] = set()
    for line in unit_settings((SYSTEMD / unit).read_text())["Service.SystemCallFilter"]:
        denied = line.startswith("~")
        for name in line.removeprefix("~").split():
            calls = _expand(name, analyze)
            allowed = allowed - calls if denied else allowed | calls
    return allowed
