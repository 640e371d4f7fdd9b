"""A fingerprint of a base model's weights, so that a run cannot mix silos whose weights differ
behind an identical config.json.

SHA-256 over every weight file's name, size and SHA-256, in name order. Hashing a 7B model
reads ~15 GB once; the digest of each file is cached by (path, size, modification time), so a
restarted silo agent pays nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from shared.cache import cache_dir

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _file_digest(path: Path, cache: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in cache:
        with path.open("rb") as handle:
            cache[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return cache[key]


def _load(cache_path: Path) -> dict[str, str]:
    try:
        loaded = json.loads(cache_path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(cache_path: Path, cache: dict[str, str]) -> None:
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, cache_path)
    except OSError as exc:  # a read-only home: the fingerprint is still right, only slower
        log.debug("weight digest cache not written: %s", exc)


def weights_fingerprint(model_dir: Path, *, cache_path: Path | None = None) -> str:
    """The fingerprint of the weight files in `model_dir` ("" if there are none); file
    digests are kept in `cache_path` (default: the user's cache directory)."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return ""
    cache_path = cache_path or cache_dir() / "weight-digests.json"
    cache = _load(cache_path)
    total = hashlib.sha256()
    for path in files:
        entry = (
            f"{path.relative_to(model_dir)}\0{path.stat().st_size}\0{_file_digest(path, cache)}\n"
        )
        total.update(entry.encode())
    _store(cache_path, cache)
    return total.hexdigest()
