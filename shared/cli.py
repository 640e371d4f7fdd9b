"""What every command shares: exit codes, one-line errors, parsers whose help shows defaults."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

# docs/deploy.md §4; the systemd units restart on 1 and never on 2, 3 or 4.
EXIT_OK = 0
EXIT_FAILED = 1  # a restart may cure it: a crash, a coordinator away
EXIT_USAGE = 2  # an unknown option or a value out of range
EXIT_REFUSED = 3  # refused permanently: this silo's model or certificate
EXIT_CONFIG = 4  # a missing or unusable file, directory or port
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

LOG_LEVELS = ("debug", "info", "warning", "error")


class CliError(Exception):
    """Ends a command with one line on stderr and `code`: the problem, then the fix."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def usage_error(message: str) -> CliError:
    return CliError(message, code=EXIT_USAGE)


def refused(message: str) -> CliError:
    return CliError(message, code=EXIT_REFUSED)


def config_error(message: str) -> CliError:
    return CliError(message, code=EXIT_CONFIG)


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped by paragraph, indented blocks kept as written; every option that
    has a default shows it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, "", argparse.SUPPRESS) and not isinstance(
            action, argparse._HelpAction | argparse._VersionAction
        )
        if shown and "%(default)" not in text and "default:" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with our help format, and usage errors in one line with exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def log_level(text: str) -> str:
    """`--log-level` in any case: debug, INFO, ... (logging's names are upper case)."""
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=log_level,
        default="INFO",
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        help="least severe messages logged",
    )


def run_command(prog: str, command: Callable[[list[str]], int | None], argv: Sequence[str]) -> None:
    """Run `command(argv)`; exit with its code unless 0 (a caller in-process goes on). A
    CliError or Ctrl-C ends in one line on stderr."""
    try:
        code = command(list(argv))
    except CliError as error:
        print(f"{prog}: {error}", file=sys.stderr, flush=True)
        code = error.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        code = EXIT_INTERRUPTED
    if code:
        sys.exit(code)


def argv_or_sys(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)
