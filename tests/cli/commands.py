"""The installed commands run as an operator runs them: separate processes, exit code and
output as the shell and systemd see them."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = (
    "fedmllm-certs",
    "fedmllm-coordinator",
    "fedmllm-admin",
    "silo-agent",
    "fedmllm-demo",
    "fedmllm-partition",
    "fedmllm-bench",
    "fedmllm-predict",
)


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def one_line(self) -> str:
        """The single line a failed command must print: no traceback, no usage block."""
        assert "Traceback" not in self.err, self.err
        assert self.err.count("\n") == 1 and self.err.endswith("\n"), self.err
        return self.err


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without connection settings that would leak into a case."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMLLM_")}
    return env | extra


def run(command: str, *argv: str | Path, env: dict[str, str] | None = None) -> Ran:
    done = subprocess.run(
        [str(BIN / command), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else clean_environment(),
    )
    return Ran(done.returncode, done.stdout, done.stderr)
