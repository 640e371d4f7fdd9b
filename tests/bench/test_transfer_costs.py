"""bench.transfer_costs writes its table into its own section of a benchmarks document."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import transfer_costs


def test_the_costs_table_replaces_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text(
        "before\n<!-- transfer-costs:begin -->\nold\n<!-- transfer-costs:end -->\nafter\n"
    )
    monkeypatch.chdir(tmp_path)
    transfer_costs.main(["--megabytes", "8", "--repeats", "1", "--write-docs"])
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "MB" not in line]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == [
        "SHA-256 of the payload",
        "CRC-32 of the payload",
        "copy into one fresh buffer",
        "build and serialise a message per chunk",
    ]
    assert all(float(r.rsplit("|", 2)[1]) >= 0 for r in rows)
