"""Log set-up of the long-running commands: text or JSON lines, each library warning once."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from shared.cli import add_log_level

LOG_FORMATS = ("text", "json")
# Loggers of this project: their messages name a round or a silo, so a repeat is news.
OWN_LOGGERS = ("coordinator", "silo_agent", "shared", "bench")
# Known and harmless, shown at DEBUG so that they do not look like faults: bitsandbytes'
# optional faster CPU kernel is not installed (it uses its own); PEFT calls a transformers API
# deprecated for v6 (nothing an operator can act on).
_HARMLESS = (
    "Failed to load CPU gemm_4bit_forward from kernels-community",
    "`is_gradient_checkpointing` is deprecated",
)


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    add_log_level(parser)
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or one JSON object a line (for a log collector)",
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, process role, logger and message."""

    def __init__(self, *, role: str, name: str = "") -> None:
        super().__init__()
        self._party = {"role": role, **({"name": name} if name else {})}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            **self._party,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class OncePerMessage(logging.Filter):
    """A library's warning is logged the first time only (they repeat one per round)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(h in message for h in _HARMLESS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        if record.levelno < logging.WARNING or record.name.split(".")[0] in OWN_LOGGERS:
            return True
        key = (record.name, message)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def configure_logging(*, level: str, log_format: str, role: str, name: str = "") -> None:
    """Root logging for a process of `role` ("coordinator", "silo") named `name` (a silo's
    identity). Python warnings go through it too. Without a terminal, libraries' progress bars
    are off: they would fill log files and the journal."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(role=role, name=name))
    else:
        label = f"{role}[{name}]" if name else role
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {label} %(name)s: %(message)s")
        )
    handler.addFilter(OncePerMessage())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
