"""The options a command accepts, read from its `--help` as an operator would read them."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from importlib import metadata

# `[--flag VALUE]`, `--flag {a,b}`, `[--switch]` in argparse's usage lines
_USAGE_OPTION = re.compile(r"(\[)?(--[\w-]+)(?: (\{[^}]*\}|[^\s\[\]{}-][^\s\[\]]*))?")


@dataclass(frozen=True)
class Option:
    takes_value: bool
    choices: tuple[str, ...]
    required: bool


def entry_point(command: str) -> Callable[[list[str]], object]:
    """The function installed as `command` (pyproject.toml's [project.scripts])."""
    (script,) = metadata.distribution("fedmllm").entry_points.select(
        group="console_scripts", name=command
    )
    main: Callable[[list[str]], object] = script.load()
    return main


def options_of(command: str) -> dict[str, Option]:
    shown = io.StringIO()
    try:
        with redirect_stdout(shown):
            entry_point(command)(["--help"])
    except SystemExit as exited:
        assert exited.code in (0, None), f"{command} --help exited {exited.code}"
    usage = " ".join(shown.getvalue().split("\n\n")[0].split())  # argparse wraps anywhere
    assert usage.startswith("usage:"), f"{command} --help printed no usage: {usage[:200]}"
    options = {}
    for optional, flag, value in _USAGE_OPTION.findall(usage):
        choices = tuple(value[1:-1].split(",")) if value.startswith("{") else ()
        options[flag] = Option(takes_value=bool(value), choices=choices, required=not optional)
    return options


def command_problems(command: str, argv: Sequence[str]) -> list[str]:
    """Why `command argv` would not parse: unknown options, missing values or required options."""
    options = options_of(command)
    problems, seen, words = [], set(), list(argv)
    while words:
        flag, has_value, value = words.pop(0).partition("=")
        option = options.get(flag)
        seen.add(flag)
        if option is None:
            problems.append(f"{command} has no option {flag}")
            continue
        if option.takes_value and not has_value:
            value = words.pop(0) if words and not words[0].startswith("--") else ""
        if option.takes_value and not value:
            problems.append(f"{command} {flag} needs a value")
        elif option.choices and value not in option.choices:
            problems.append(f"{command} {flag} {value!r} is not one of {option.choices}")
    missing = sorted(f for f, o in options.items() if o.required and f not in seen)
    problems += [f"{command} needs {flag}" for flag in missing]
    return problems
