"""What the coordinator checks before it loads anything, each failure one line with its fix:
the model's config.json, the adapter directory and the checkpoint directory."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

from shared.cli import config_error

LAYOUT = "docs/deploy.md §5"


def check_model_dir(model: Path) -> None:
    config = model / "config.json"
    if not model.is_dir():
        raise config_error(f"--model {model} is not a directory: pass the base model's directory")
    if not config.is_file():
        raise config_error(
            f"--model {model} has no config.json: pass a Hugging Face model directory "
            "(its config.json is all the coordinator reads)"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise config_error(f"{config} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise config_error(f"{config} names no model_type: is it a Hugging Face model config?")


def check_adapter_dir(adapter: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / name).is_file():
            raise config_error(
                f"--adapter {adapter} has no {name}: pass a PEFT adapter directory "
                "(silo-agent init-adapter or fedmllm-admin export writes one)"
            )


def check_checkpoint_dir(directory: Path) -> None:
    """Creatable, writable, and not held by another coordinator."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except FileExistsError:
        raise config_error(f"--checkpoint-dir {directory} is a file, not a directory") from None
    except OSError as exc:
        raise config_error(
            f"cannot create or write --checkpoint-dir {directory} as user {os.getuid()} "
            f"({exc.strerror}): give that user the directory ({LAYOUT}), or choose another"
        ) from None
    with (directory / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise config_error(
                f"--checkpoint-dir {directory} is in use by another coordinator: stop that one, "
                "or give this one a directory of its own"
            ) from None
