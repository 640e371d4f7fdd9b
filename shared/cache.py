"""Where FedMLLM keeps what it can rebuild: $XDG_CACHE_HOME/fedmllm, else ~/.cache/fedmllm."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The directory (not created here): weight digests, judge verdicts, native loops."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedmllm"
