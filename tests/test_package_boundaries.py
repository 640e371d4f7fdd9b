"""The run-time packages never import the benchmark (nor each other's role), and every command
declared in pyproject.toml resolves to a callable."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# package -> the top-level packages it must never import at run time
FORBIDDEN = {
    "shared": {"bench", "coordinator", "silo_agent"},
    "coordinator": {"bench", "silo_agent"},
    "silo_agent": {"bench", "coordinator"},
}


def imported_modules(source: str) -> Iterator[str]:
    """Every absolute module a source names in an import statement (local ones included) or
    in a literal `importlib.import_module(...)` call."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import bench", {"bench"}),
        ("from bench.data.twins import TWINS", {"bench.data.twins"}),
        ("def f():\n    from bench.demo import tiny_model", {"bench.demo"}),
        ("import importlib\nimportlib.import_module('bench.cli')", {"importlib", "bench.cli"}),
        ("from . import records\nfrom .x import y", set()),
    ],
)
def test_every_kind_of_import_is_seen(source: str, found: set[str]) -> None:
    assert set(imported_modules(source)) == found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_runtime_packages_keep_to_their_side(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"{package}/ holds no modules"
    crossing = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules
        for name in imported_modules(path.read_text(encoding="utf-8"))
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not crossing, "\n".join(crossing)


def _scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        scripts: dict[str, str] = tomllib.load(handle)["project"]["scripts"]
    return scripts


@pytest.mark.parametrize(("command", "target"), sorted(_scripts().items()))
def test_every_command_resolves_to_a_callable(command: str, target: str) -> None:
    module, _, attribute = target.partition(":")
    found: object = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    assert callable(found), f"{command} = {target!r} is not callable"
