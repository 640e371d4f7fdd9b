"""Read the Dockerfiles, .dockerignore and compose file as Docker would, without an engine."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.packaging import ROOT

DOCKER = ROOT / "deploy" / "docker"


@dataclass
class Dockerfile:
    """The instructions that matter here; a later stage's values replace an earlier one's."""

    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, --from stage)
    runs: list[str] = field(default_factory=list)
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        parsed = cls()
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            instruction, _, rest = line.strip().partition(" ")
            if instruction == "COPY":
                words = shlex.split(rest)
                stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), "")
                paths = [w for w in words if not w.startswith("--")]
                parsed.copies.append((paths[:-1], stage))
            elif instruction == "RUN":
                parsed.runs.append(rest)
            elif instruction == "USER":
                parsed.user = rest.strip()
            elif instruction == "ENTRYPOINT":
                parsed.entrypoint = json.loads(rest)
            elif instruction == "HEALTHCHECK":
                parsed.healthcheck = json.loads(rest.split(" CMD ", 1)[1])
        return parsed


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` (relative to the repository root) into the context:
    the last rule matching it or a folder above it decides; `!` lets it back in."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for rule in rules:
        pattern = rule.removeprefix("!")
        patterns = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns):
            included = rule.startswith("!")
    return included


def expand_defaults(value: str) -> str:
    """Compose's `${NAME:-default}` with NAME unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
