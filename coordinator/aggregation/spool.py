"""A spooled update read in place: the file mapped into memory and viewed in its wire dtype,
each stretch let go once read, so that folding it costs no copy and no lasting memory."""

from __future__ import annotations

import mmap
from pathlib import Path
from types import TracebackType

import torch

PAGE = mmap.PAGESIZE


class SpoolView:
    """The values of one spooled update; use as a context manager. Tensors from `values`
    are views of the file: callers drop them before the view closes."""

    def __init__(self, path: Path, dtype: str) -> None:
        self._dtype = getattr(torch, dtype)
        self.itemsize = torch.empty(0, dtype=self._dtype).element_size()
        self._map: mmap.mmap | None = None
        self._values = torch.empty(0, dtype=self._dtype)
        with path.open("rb") as handle:
            size = path.stat().st_size
            if size % self.itemsize:
                raise OSError(f"spooled update {path} is truncated")
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
        """Unmap the whole pages of elements [start, start + count): read once, they need
        not count toward the coordinator's memory (the file keeps them)."""
        if self._map is None:
            return
        first = -(-start * self.itemsize // PAGE) * PAGE
        last = (start + count) * self.itemsize // PAGE * PAGE
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        self._values = torch.empty(0, dtype=self._dtype)
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> SpoolView:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
