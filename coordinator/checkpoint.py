"""Per-round checkpoints written atomically (write, fsync, rename), and resuming from the latest.

Layout: `<dir>/runs/<run_id>/round-<NNNNN>/{adapter,strategy}.safetensors` and `run.json`, and
`<dir>/current`
naming the run to resume. Round 0 holds the run's initial adapter. A crash at any point leaves
either the previous complete round or the new complete round, never a half-written one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from safetensors.torch import load_file, save_file

from coordinator.run_state import RunRecord
from shared.tensor_codec import StateDict

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
STRATEGY_FILE = "strategy.safetensors"
RUN_FILE = "run.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


# Adapters trained on patient data, and the state that rebuilds them: owner-only.
FILE_MODE, DIR_MODE = 0o600, 0o700


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) owner-only; an existing one is narrowed too."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, FILE_MODE)
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class CheckpointFull(OSError):
    """The checkpoint directory has no room for a round: nothing was saved, nothing lost."""

    def __init__(self, directory: Path, *, needed: int, free: int) -> None:
        super().__init__(
            f"checkpoint directory {directory} full: about {needed:,} bytes needed, {free:,} free"
        )
        self.needed, self.free = needed, free


# A write that failed for want of room (or quota) is a full disk, not a broken run.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def no_room(exc: BaseException) -> bool:
    """Whether a failed write ran out of disk (safetensors reports it only in its message)."""
    if isinstance(exc, OSError):
        return exc.errno in _NO_ROOM
    return any(f"os error {code})" in str(exc) for code in _NO_ROOM)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded round checkpoint."""

    round: int
    run: RunRecord
    adapter: StateDict
    strategy_state: StateDict


class CheckpointStore:
    """Writes and reads round checkpoints under one directory; keeps the last `keep` rounds."""

    def __init__(self, root: Path, *, keep: int = 5) -> None:
        self.root = root
        self.keep = max(keep, 1)
        self._lock_handle: TextIO | None = None
        self._writing = threading.Lock()  # the run thread and admin calls both write
        private_dir(root)

    def lock(self) -> None:
        """Hold the directory for this process (one coordinator per checkpoint directory) and
        clear what a crash may have left: half-written rounds and half-received updates."""
        handle = (self.root / ".lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(f"{self.root} is in use by another coordinator") from None
        self._lock_handle = handle
        for leftover in self.root.glob("runs/*/.round-*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for pattern in ("incoming/update-*", ".*.tmp-*", "runs/*/round-*/.*.tmp-*"):
            for leftover in self.root.glob(pattern):
                leftover.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing releases the flock
            self._lock_handle = None

    def _run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def save_round(
        self, run: RunRecord, round_index: int, adapter: StateDict, strategy_state: StateDict
    ) -> Path:
        """Save a round atomically; CheckpointFull (and nothing half-written) if there is no
        room for it."""
        with self._writing:
            try:
                return self._save_round(run, round_index, adapter, strategy_state)
            except Exception as exc:
                if not no_room(exc):
                    raise
                for leftover in self.root.glob(f"runs/{run.run_id}/.round-*.tmp-*"):
                    shutil.rmtree(leftover, ignore_errors=True)
                needed = sum(t.numel() * t.element_size() for t in adapter.values())
                needed += sum(t.numel() * t.element_size() for t in strategy_state.values())
                raise CheckpointFull(self.root, needed=needed, free=self.bytes_free()) from exc

    def bytes_free(self) -> int:
        return shutil.disk_usage(self.root).free

    def try_update_run(self, run: RunRecord) -> bool:
        """update_run that logs instead of raising (a failure path must not fail)."""
        try:
            self.update_run(run)
            return True
        except OSError as exc:
            log.error("run %s: its record could not be written: %s", run.run_id, exc)
            return False

    def _save_round(
        self, run: RunRecord, round_index: int, adapter: StateDict, strategy_state: StateDict
    ) -> Path:
        run_dir = self._run_dir(run.run_id)
        private_dir(run_dir.parent)
        private_dir(run_dir)
        final = run_dir / f"round-{round_index:05d}"
        tmp = run_dir / f".round-{round_index:05d}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=DIR_MODE)
        save_file(adapter, str(tmp / ADAPTER_FILE))
        save_file({k: v.contiguous() for k, v in strategy_state.items()}, str(tmp / STRATEGY_FILE))
        (tmp / RUN_FILE).write_text(json.dumps(run.to_dict(), indent=1), encoding="utf-8")
        for name in (ADAPTER_FILE, STRATEGY_FILE, RUN_FILE):
            os.chmod(tmp / name, FILE_MODE)
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # a round redone after a crash between rename and pointer update
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        _write_text_atomic(self.root / "current", run.run_id)
        self._prune(run_dir)
        return final

    def update_run(self, run: RunRecord) -> None:
        """Rewrite the run record of the latest round (a stop or completion), atomically."""
        with self._writing:
            latest = self._latest_round_dir(run.run_id)
            if latest is not None:
                _write_text_atomic(latest / RUN_FILE, json.dumps(run.to_dict(), indent=1))

    def round_dirs(self, run_id: str) -> list[Path]:
        run_dir = self._run_dir(run_id)
        if not run_dir.is_dir():
            return []
        return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("round-"))

    def adapter_file(self, run_id: str, round_index: int) -> tuple[int, Path]:
        """The saved adapter of a kept round (0: the latest) of a run, with its round number."""
        dirs = self.round_dirs(run_id)
        if not dirs:
            raise FileNotFoundError(f"run {run_id} has no checkpoint")
        wanted = dirs[-1].name if round_index == 0 else f"round-{round_index:05d}"
        chosen = next((d for d in dirs if d.name == wanted), None)
        if chosen is None:
            kept = ", ".join(d.name.removeprefix("round-").lstrip("0") or "0" for d in dirs)
            raise FileNotFoundError(
                f"round {round_index} of run {run_id} is not kept (kept: {kept})"
            )
        return int(chosen.name.removeprefix("round-")), chosen / ADAPTER_FILE

    def run_ids(self) -> list[str]:
        """Every run with a kept round, newest first (run ids start with their start time)."""
        runs = self.root / "runs"
        if not runs.is_dir():
            return []
        return sorted((p.name for p in runs.iterdir() if self.round_dirs(p.name)), reverse=True)

    def load_run(self, run_id: str) -> RunRecord:
        """The record of a kept run as of its latest round; FileNotFoundError if none."""
        latest = self._latest_round_dir(run_id)
        if latest is None:
            raise FileNotFoundError(f"no run {run_id!r} is kept in {self.root}")
        try:
            return RunRecord.from_dict(json.loads((latest / RUN_FILE).read_text("utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"{latest / RUN_FILE} is unreadable: {exc}") from exc

    def _latest_round_dir(self, run_id: str) -> Path | None:
        dirs = self.round_dirs(run_id)
        return dirs[-1] if dirs else None

    def _prune(self, run_dir: Path) -> None:
        dirs = self.round_dirs(run_dir.name)
        for old in dirs[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def load_latest(self) -> Checkpoint | None:
        """The newest complete round of the current run, or None for a fresh directory."""
        pointer = self.root / "current"
        if not pointer.is_file():
            return None
        run_id = pointer.read_text(encoding="utf-8").strip()
        if self._latest_round_dir(run_id) is None:
            return None
        return self.load_run_checkpoint(run_id)

    def load_run_checkpoint(self, run_id: str) -> Checkpoint:
        """The newest complete round of a kept run; FileNotFoundError if it has none."""
        latest = self._latest_round_dir(run_id)
        if latest is None:
            raise FileNotFoundError(f"no run {run_id!r} is kept in {self.root}")
        try:
            run = RunRecord.from_dict(json.loads((latest / RUN_FILE).read_text(encoding="utf-8")))
            adapter = load_file(str(latest / ADAPTER_FILE))
            strategy_state = load_file(str(latest / STRATEGY_FILE))
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"checkpoint {latest} is unreadable: {exc}") from exc
        return Checkpoint(
            round=int(latest.name.removeprefix("round-")),
            run=run,
            adapter=adapter,
            strategy_state=strategy_state,
        )

    def point_to(self, run_id: str) -> None:
        """Make `run_id` the run a restarted coordinator resumes."""
        with self._writing:
            _write_text_atomic(self.root / "current", run_id)

    def run_dir(self, run_id: str) -> Path:
        return self._run_dir(run_id)

    def forget_run(self, run_id: str) -> None:
        """Remove a run that never got its first round saved (a start that failed)."""
        with self._writing:
            if not self.round_dirs(run_id):
                shutil.rmtree(self._run_dir(run_id), ignore_errors=True)
