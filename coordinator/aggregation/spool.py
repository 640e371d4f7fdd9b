"""Spooled updates: files reused round after round, and read in place (float32 and bfloat16
ones stretch by stretch into a small buffer of each thread's, others mapped into memory and
viewed in their wire dtype, each stretch let go once read): spooling costs one copy into pages
the file already has, and folding no lasting memory."""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, ClassVar, Self

import torch

from coordinator.aggregation import native
from coordinator.aggregation.kernels import add_many, native_bfloat16

PAGE = mmap.PAGESIZE
INCOMING = "incoming"  # the spool directory, inside the checkpoint directory


class SpoolPool:
    """The spool files of one directory. A new file costs the filesystem a page and a block
    for every 4 KiB written (0.1 to 1.2 s of kernel time per 600 MB, measured here); writing
    over a file of the last round costs a copy (0.05 s). Files handed back are kept for the
    next uploads, so the disk holds as many as a round had uploads at once."""

    _pools: ClassVar[dict[Path, SpoolPool]] = {}
    _pools_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._free: dict[Path, None] = {}  # ordered, and a file handed back twice is kept once
        self._lock = threading.Lock()

    @classmethod
    def at(cls, directory: Path) -> SpoolPool:
        with cls._pools_lock:
            pool = cls._pools.get(directory)
            if pool is None:
                pool = cls._pools[directory] = cls(directory)
            return pool

    def take(self) -> Path:
        """A spool file's path, a free one if there is one, else a new name."""
        with self._lock:
            if self._free:
                path = next(iter(self._free))
                del self._free[path]
                return path
        # named like every spool, so that a restarted coordinator clears them (CheckpointStore)
        return self._directory / f"update-{secrets.token_hex(8)}.bin"

    @staticmethod
    def open(path: Path) -> BinaryIO:
        """For writing from the start, over what the file held (owner-only; created again if
        a restart cleared it)."""
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb")

    def give_back(self, path: Path) -> None:
        """The update in `path` is no longer needed: keep the file for the next one."""
        if path.parent == self._directory and path.exists():
            with self._lock:
                self._free[path] = None

    def drain(self) -> None:
        """Delete the files kept for reuse: the disk is full, and they hold room it needs."""
        with self._lock:
            kept, self._free = list(self._free), {}
        for path in kept:
            path.unlink(missing_ok=True)


class _Closing:
    """Closed on leaving its `with` block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class SpoolView(_Closing):
    """The values of one spooled update; use as a context manager. Tensors from `values`
    are views of the file: callers drop them before the view closes."""

    def __init__(
        self, path: Path, dtype: str, *, elements: int | None = None, hold: int = 0
    ) -> None:
        """`elements`: only the first ones (of an update still being written), else all.
        `hold`: bytes of pages read that may stay mapped before `release` lets them go."""
        self._dtype = getattr(torch, dtype)
        self.itemsize = torch.empty(0, dtype=self._dtype).element_size()
        self._hold = hold
        self._kept: int | None = None  # the first byte of the pages read and still mapped
        self._map: mmap.mmap | None = None
        self._values = torch.empty(0, dtype=self._dtype)
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            _check_size(path, size, self.itemsize, elements)
            if elements is not None:
                size = elements * self.itemsize
            if size:
                self._map = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
                self._values = torch.frombuffer(self._map, dtype=self._dtype)
        self.numel = self._values.numel()

    def values(self, start: int, count: int) -> torch.Tensor:
        """Elements [start, start + count) of the update (a view of the file)."""
        if start + count > self.numel:
            raise OSError(f"spooled update has {self.numel} values, not {start + count}")
        return self._values[start : start + count]

    def release(self, start: int, count: int) -> None:
        """Elements [start, start + count) were read (stretches in order): unmap the whole
        pages read so far once more than `hold` bytes of them are mapped. Read once, they
        need not count toward the coordinator's memory (the file keeps them); each unmapping
        costs a flush of both CPUs' address caches, which in a virtual machine is dear
        (measured here: 6 ms per 600 MB let go 4 MiB at a time, 2 ms 16 MiB at a time)."""
        if self._map is None:
            return
        if self._kept is None:
            self._kept = -(-start * self.itemsize // PAGE) * PAGE
        last = (start + count) * self.itemsize // PAGE * PAGE
        if last - self._kept > self._hold:
            self._map.madvise(mmap.MADV_DONTNEED, self._kept, last - self._kept)
            self._kept = last

    def close(self) -> None:
        self._values = torch.empty(0, dtype=self._dtype)
        if self._map is not None:
            self._map.close()
            self._map = None


class SpooledUpdates(_Closing):
    """Several spooled updates, added into a running sum stretch by stretch (use as a context
    manager). Float32 and bfloat16 ones (bfloat16 where the native loop adds them as the
    compiled widening kernels do: kernels.native_bfloat16) are read from their files by the
    native loop (native.py): each thread reads a stretch of one file after another into a
    buffer of its own and adds it from there, so the files are never mapped; a mapped page
    costs a fault on first touch and a flush of both CPUs' address caches when let go. Read,
    a carried float32 update cost about 0.7 of an in-memory `add_` against 1.0 mapped, and
    1.1 against 1.6-1.75 in the machine's faster memory phase (measured ad hoc: 150M values,
    8 updates at once). Otherwise (float16 spools, or without the native loops) they are mapped
    (SpoolView) and added by the kernels. Either way the same arithmetic, in the order given:
    the same bits."""

    def __init__(
        self, paths: Sequence[Path], dtype: str, *, elements: int | None = None, hold: int = 0
    ) -> None:
        """`elements`, `hold`: as SpoolView's."""
        self.paths = list(paths)
        self._dtype = dtype
        self._files: list[BinaryIO] = []
        self._views: list[SpoolView] = []
        self._opened = contextlib.ExitStack()
        try:
            if native.library() is not None and (
                dtype == "float32" or (dtype == "bfloat16" and native_bfloat16())
            ):
                itemsize = getattr(torch, dtype).itemsize
                self._files = [self._opened.enter_context(p.open("rb")) for p in self.paths]
                for path, file in zip(self.paths, self._files, strict=True):
                    _check_size(path, os.fstat(file.fileno()).st_size, itemsize, elements)
            else:
                self._views = [
                    self._opened.enter_context(SpoolView(p, dtype, elements=elements, hold=hold))
                    for p in self.paths
                ]
        except BaseException:
            self._opened.close()
            raise

    def add_into(
        self, target: torch.Tensor, element: int, alphas: Sequence[float], *, write: bool = False
    ) -> None:
        """target += alpha * values for each update in turn (the first written instead if
        `write`), values its elements [element, element + len(target)). OSError naming the
        file if one cannot be read."""
        if not self.paths:
            return
        if self._files:
            spools = [(f.fileno(), p) for f, p in zip(self._files, self.paths, strict=True)]
            if not native.add_read(target, spools, element, alphas, write=write, dtype=self._dtype):
                raise RuntimeError("spooled updates added into a sum that is not float32")
            return
        count = target.numel()
        values = [view.values(element, count) for view in self._views]
        add_many(target, values, alphas, write=write)
        del values
        for view in self._views:
            view.release(element, count)

    @property
    def read(self) -> list[tuple[int, Path]] | None:
        """Each file's descriptor and path, where the native loop reads them (none where there
        are none); None where they are mapped."""
        if self._files or not self.paths:
            return [(f.fileno(), p) for f, p in zip(self._files, self.paths, strict=True)]
        return None

    def close(self) -> None:
        self._opened.close()


def _check_size(path: Path, size: int, itemsize: int, elements: int | None) -> None:
    """OSError unless the file holds `elements` values (or, if None, whole values)."""
    if (elements is not None and elements * itemsize > size) or (
        elements is None and size % itemsize
    ):
        raise OSError(f"spooled update {path} is truncated")
