"""Untrusted text from the wire made safe to parse, store and print."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import FedMLLMError

# Deeper than any model config (Hugging Face configs nest 3-4 levels).
MAX_JSON_DEPTH = 32


class UntrustedInput(FedMLLMError):
    """A peer sent text too large, too deep or not parseable."""


def printable(text: str, *, limit: int = 64) -> str:
    """`text` with control and other non-printable characters replaced, cut to `limit`
    characters: what a log line, a refusal or an operator's table may show of peer input."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a hostile document cannot blow the
    stack here; the parser itself refuses pathological nesting first)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_JSON_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def bounded_json(text: str, *, what: str, max_bytes: int) -> Any:
    """Parse JSON sent by a peer, refusing documents over `max_bytes` or nested deeper than
    MAX_JSON_DEPTH with UntrustedInput (never RecursionError or MemoryError)."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise UntrustedInput(f"{what} is {size} bytes; at most {max_bytes} are accepted")
    try:
        value = json.loads(text)
    except RecursionError:
        raise UntrustedInput(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise UntrustedInput(f"{what} is not valid JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise UntrustedInput(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value
