"""Logs of the long-running commands: JSON lines on request, a library's warning once, the
known-harmless bitsandbytes notice only at debug level, and progress as log lines (never a
bar) when the output is not a terminal."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.cli.commands import clean_environment

# A process as the coordinator or a silo agent sets itself up, then a library that warns
# every round, Python warnings, bitsandbytes' notice, and a training loop's progress.
SCRIPT = """
import logging, sys, warnings
from shared.logs import configure_logging
from shared.progress import progress

configure_logging(level=sys.argv[1], log_format=sys.argv[2], role="silo", name="hospital-a")
for round_index in (1, 2, 3):
    logging.getLogger("transformers.generation").warning("pad_token_id is not set")
    warnings.warn("a deprecated call", FutureWarning, stacklevel=1)
    logging.getLogger("silo_agent.client").warning("round %d: heartbeat failed", round_index)
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'."
)
for _ in progress(range(120), desc="round 1 epoch 1", every=50):
    pass
"""


def _run(level: str, log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, level, log_format],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(PYTHONWARNINGS="always"),  # as a library that resets filters
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_json_lines_with_the_silo_name_and_each_library_warning_once() -> None:
    entries = [json.loads(line) for line in _run("INFO", "json")]
    assert all(e["role"] == "silo" and e["name"] == "hospital-a" for e in entries)
    messages = [e["message"] for e in entries]
    assert messages.count("pad_token_id is not set") == 1
    assert sum("a deprecated call" in m for m in messages) == 1
    assert [m for m in messages if "heartbeat failed" in m] == [
        f"round {i}: heartbeat failed" for i in (1, 2, 3)
    ]
    assert not any("kernels-community" in m for m in messages)
    progress = [m for m in messages if m.startswith("round 1 epoch 1")]
    assert [re.sub(r"[\d.]+ s$", "T s", m) for m in progress] == [
        "round 1 epoch 1: step 50/120, T s",
        "round 1 epoch 1: step 100/120, T s",
        "round 1 epoch 1: 120 steps done in T s",
    ]


def test_text_lines_and_the_harmless_notice_at_debug_level() -> None:
    lines = _run("DEBUG", "text")
    notice = [line for line in lines if "kernels-community" in line]
    assert len(notice) == 1 and " DEBUG silo[hospital-a] bitsandbytes" in notice[0]
    assert not any("\r" in line or "it/s" in line for line in lines)  # no progress bar
