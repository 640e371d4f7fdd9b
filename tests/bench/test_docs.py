"""bench.docs names the processor a table was measured on, and replaces only its own section."""

from __future__ import annotations

import platform
from pathlib import Path

from bench import docs

CASCADE_LAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz
flags\t\t: fpu vme

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz
"""


def test_the_processor_is_named_as_the_kernel_reports_it(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CASCADE_LAKE)
    assert docs.cpu_name(cpuinfo) == f"{platform.machine()} (Intel(R) Xeon(R) Processor @ 2.50GHz)"


def test_without_a_model_name_the_architecture_alone(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\nmodel name\t:   \n")
    assert docs.cpu_name(cpuinfo) == platform.machine()
    assert docs.cpu_name(tmp_path / "absent") == platform.machine()


def test_a_section_is_replaced_under_this_machines_line(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("before\n<!-- x:begin -->\nold\n<!-- x:end -->\nafter\n")
    docs.replace_section(page, "x", "new table")
    text = page.read_text()
    assert text.startswith("before\n<!-- x:begin -->\nMeasured ") and text.endswith(
        "new table\n<!-- x:end -->\nafter\n"
    )
    assert f" on {docs.cpu_name()} with " in text and "old" not in text
