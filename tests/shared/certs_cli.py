"""How fedmllm-certs refuses: one line on stderr and exit code 4."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest

from shared.pki import main


def refusal(argv: list[str]) -> str:
    """The line fedmllm-certs refuses `argv` with; fails the test unless it is one line, exit 4."""
    said = io.StringIO()
    with redirect_stderr(said), pytest.raises(SystemExit) as ended:
        main(argv)
    line = said.getvalue()
    assert ended.value.code == 4, line
    assert line.startswith("fedmllm-certs: ") and line.count("\n") == 1, line
    return line
