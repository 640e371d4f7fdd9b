"""Run specifications from a YAML run config file and command-line flags, validated."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from coordinator.run_schema import BY_FIELD, OPTIONS, RunOption
from coordinator.run_state import RunSpec
from shared.cli import EXIT_CONFIG, EXIT_USAGE, CliError

_DEFAULTS = {f.name: f.default for f in fields(RunSpec)}
# A config file key: a flag's name or a RunSpec field's, with '-' or '_'.
_KEYS = {o.key.replace("-", "_"): o for o in OPTIONS} | {o.field: o for o in OPTIONS}


class RunConfigError(CliError):
    """A run config file or flag combination that does not make a valid RunSpec."""

    def __init__(self, message: str, *, code: int = EXIT_USAGE) -> None:
        super().__init__(message, code=code)


def _flag_type(option: RunOption) -> Any:
    def parse(text: str) -> Any:
        try:
            return option.check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.kind.__name__ if isinstance(option.kind, type) else "choice"
    return parse


def _full_name(option: RunOption) -> Any:
    """A choice flag's value with a short name replaced by the name it stands for."""
    full = dict(option.aliases)

    def parse(text: str) -> str:
        return full.get(text, text)

    parse.__name__ = "choice"
    return parse


def _help(option: RunOption) -> str:
    default = _DEFAULTS[option.field]
    shown = "the strategy's" if default is None else repr(default) if default == "" else default
    allowed = f"; {option.range_text()}" if option.range_text() else ""
    if option.aliases:
        allowed += "; or " + ", ".join(f"{short} ({full})" for short, full in option.aliases)
    return f"{option.help}{allowed} (default: {shown})".replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--config and one flag per run option; a flag given overrides the config file."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="YAML",
        help="run config file: keys are these flags' names (examples in deploy/config/)",
    )
    for option in OPTIONS:
        if isinstance(option.kind, tuple):  # a short name becomes its full one before the check
            parser.add_argument(
                option.flag,
                dest=option.field,
                type=_full_name(option),
                choices=[c for c in option.kind if c],
                default=None,
                help=_help(option),
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.field,
                type=_flag_type(option),
                default=None,
                metavar=option.kind.__name__.upper(),
                help=_help(option),
            )


def read_config(path: Path) -> dict[str, Any]:
    """The file's values by RunSpec field, each checked against its option."""
    import yaml  # only a run config file needs it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunConfigError(f"{path}: cannot read run config: {exc}", code=EXIT_CONFIG) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise RunConfigError(f"{path}:{line} not YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RunConfigError(f"{path}: a run config is a mapping of option: value")
    values: dict[str, Any] = {}
    problems = []
    for key, value in data.items():
        option = _KEYS.get(str(key).replace("-", "_"))
        if option is None:
            known = ", ".join(o.key for o in OPTIONS)
            raise RunConfigError(f"{path}: unknown key {key!r}; known keys: {known}")
        if option.field in values:
            raise RunConfigError(f"{path}: {option.field} is given twice (as {key!r} too)")
        try:
            values[option.field] = option.check(value)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise RunConfigError(f"{path}: {'; '.join(problems)}")
    return values


def spec_from(args: argparse.Namespace) -> RunSpec:
    """The config file's values, overridden by any flag given, validated."""
    values = read_config(args.config) if args.config else {}
    values |= {f: getattr(args, f) for f in BY_FIELD if getattr(args, f, None) is not None}
    spec = RunSpec(**values)
    problems = spec.problems()
    if problems:
        where = f"{args.config}: " if args.config else ""
        raise RunConfigError(where + "; ".join(problems))
    return spec
