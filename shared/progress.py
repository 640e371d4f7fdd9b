"""Progress of a long loop: a bar on a terminal, a log line every N steps and at the end
otherwise (a bar's redraws would fill log files and the journal)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

STEPS_PER_LINE = 50  # without a terminal: one line per this many steps


def progress(
    items: Iterable[T], *, desc: str, total: int | None = None, every: int = STEPS_PER_LINE
) -> Iterator[T]:
    """`items`, reporting as they are consumed; `desc` names the loop ("round 3 epoch 1")."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    if sys.stderr.isatty():
        from tqdm import tqdm  # the silo extra's; only a terminal needs it

        yield from tqdm(items, desc=desc, total=total, leave=False, mininterval=2.0)
        return
    yield from _logged(items, desc=desc, total=total, every=every)


def _logged(items: Iterable[T], *, desc: str, total: int | None, every: int) -> Iterator[T]:
    started, done = time.monotonic(), 0
    of = f"/{total}" if total is not None else ""
    for item in items:
        yield item
        done += 1
        if done % every == 0 and done != total:
            log.info("%s: step %d%s, %.1f s", desc, done, of, time.monotonic() - started)
    log.info("%s: %d steps done in %.1f s", desc, done, time.monotonic() - started)
