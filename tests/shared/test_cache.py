"""One cache directory for everything FedMLLM can rebuild, as the XDG base directories say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cache import cache_dir
from shared.model_identity import weights_fingerprint


def test_the_cache_follows_xdg_cache_home_else_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fedmllm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fedmllm"


def test_weight_digests_are_kept_in_the_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    first = weights_fingerprint(model)
    kept = json.loads((tmp_path / "xdg" / "fedmllm" / "weight-digests.json").read_text())
    assert len(kept) == 1 and str((model / "model.safetensors").resolve()) in next(iter(kept))
    assert weights_fingerprint(model) == first
