"""Build the release files from the tracked sources and read what a wheel declares."""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def tracked_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [name for name in listing.decode().split("\0") if name and (ROOT / name).is_file()]


def build_release(work: Path) -> tuple[Path, Path]:
    """`python -m build` on a copy of the tracked files: the sdist, then the wheel built from it."""
    source = work / "source"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        check=True,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


@dataclass(frozen=True)
class WheelMetadata:
    """What pip reads from a wheel: requirements per extra ('' is the base) and entry points."""

    requirements: dict[str, dict[str, Requirement]]
    extras: set[str]
    console_scripts: dict[str, str]
    files: set[str]

    @classmethod
    def read(cls, wheel: Path) -> WheelMetadata:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
            meta = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
            entry_points = archive.read(f"{info}/entry_points.txt").decode()
        extras = set(meta.get_all("Provides-Extra") or [])
        requirements: dict[str, dict[str, Requirement]] = {e: {} for e in ["", *extras]}
        for line in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            extra = re.search(r'extra == "([^"]+)"', str(requirement.marker or ""))
            requirements[extra.group(1) if extra else ""][canonicalize_name(requirement.name)] = (
                requirement
            )
        scripts = entry_points.split("[console_scripts]")[1].split("[")[0]
        console = dict(
            (k.strip(), v.strip()) for k, v in (ln.split("=") for ln in scripts.split("\n") if ln)
        )
        return cls(requirements=requirements, extras=extras, console_scripts=console, files=names)

    def names(self, *extras: str) -> set[str]:
        return {name for extra in ("", *extras) for name in self.requirements[extra]}


def installed_closure(names: set[str]) -> set[str]:
    """The installed distributions that pip would bring in for `names` (markers evaluated here)."""
    found: set[str] = set()
    pending = list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        found.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or Marker(str(requirement.marker)).evaluate(
                {"extra": ""}
            ):
                pending.append(requirement.name)
    return found
