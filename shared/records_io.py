"""Reading records from JSON lines and JSON arrays; bad records stop the read, or are counted."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import DataFormatError


@dataclass
class BadRecords:
    """Bad records: the first stops the read, or with `skip` each is counted by reason."""

    skip: bool = False
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def report(self, where: str, reason: str) -> None:
        """Raise DataFormatError naming the file and line, or count it when skipping."""
        if not self.skip:
            raise DataFormatError(f"{where}: {reason}")
        self.reasons[reason.split(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


def json_lines(path: Path, bad: BadRecords) -> Iterator[tuple[str, Any]]:
    """(file:line, record) for every non-empty line; a malformed line goes to `bad`."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                bad.report(where, f"malformed JSON: {exc.msg}")


def json_array(path: Path, bad: BadRecords) -> Iterator[tuple[str, Any]]:
    """(file: record N, record) for every element of a JSON array file."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
    if not isinstance(rows, list):
        raise DataFormatError(f"{path}: expected a JSON array of records")
    for index, row in enumerate(rows):
        yield f"{path}: record {index}", row


def has_columns(row: Any, columns: tuple[str, ...], *, where: str, bad: BadRecords) -> bool:
    """Whether `row` is an object with every column; a missing one goes to `bad`."""
    if not isinstance(row, dict):
        bad.report(where, "malformed record: not an object")
        return False
    missing = [c for c in columns if c not in row]
    if missing:
        bad.report(where, f"missing column: {', '.join(missing)}")
        return False
    return True
