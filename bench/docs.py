"""Benchmarks write their tables into docs/benchmarks.md between named markers."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

# Sampled as a benchmark starts (it imports this first): by the time it writes its tables its
# own threads weigh in the average.
LOAD_BEFORE = os.getloadavg()


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name as the kernel reports it (machines of one kind are lent on
    different processors, whose figures differ several-fold), else the architecture alone."""
    try:
        lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return platform.machine()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return f"{platform.machine()} ({' '.join(value.split())})"
    return platform.machine()


def machine_line() -> str:
    """Where and when a table was measured, and how loaded the machine was."""
    load = ", ".join(f"{x:.2f}" for x in LOAD_BEFORE)
    return (
        f"Measured {dt.date.today().isoformat()} on {cpu_name()} with "
        f"{os.cpu_count()} cores; load average before the run: {load}."
    )


def replace_section(path: Path, name: str, body: str, *, origin: str = "") -> None:
    """Replace the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path`
    (appending the section if the markers are missing), under `origin` (where the figures
    come from) or, by default, the machine line of a benchmark measured in this process."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8")
    block = f"{begin}\n{origin or machine_line()}\n\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
