"""Native loops for the fold: add an update's values and measure them in one pass.

ATen adds (`add_`) and measures (a block norm) in two passes over an update's values, and at the
faster of this machine's memory speeds the norm's pass is what keeps a live fold from the memory
floor (docs/benchmarks.md); torch.compile splits the fused loop in two as well, and its widening
loop for bfloat16 values, one pass, takes 24-28 ms per 150M values where this one takes 16-18
(fresh 4 MiB chunks, the slower memory phase). The loops of native.c take one pass. An update
waiting in its spool file is read into a buffer of each thread's rather than mapped: its pages then
cost no fault and no unmapping each. They are compiled once per machine with the system's C
compiler, as torch.compile's own CPU kernels are, cached under ~/.cache/fedmllm (or
$XDG_CACHE_HOME/fedmllm; native_build.py), and used only after checking on this machine that they
add bit for bit as ATen's `add_` does, so that an update folded live and one folded from its spool
leave the same sums (bfloat16 updates, which the compiled widening kernels add where a stretch is
not a whole block, only after a check against those: kernels.native_bfloat16). Without a compiler,
where that check fails, or with FEDMLLM_COMPILE=0, the callers run ATen's two passes (the compiled
widening loops for bfloat16): the same sums, bit for bit, but block norms that may differ from the
native ones in the last bits, and with them the scale of an update a clipping rule shrinks. A run
is bit-reproducible on a machine that keeps to one of the two, as every machine does unless its
compiler comes or goes between a crash and the restart. The same library carries the payload
check's CRC-32 (crc32.c: `crc32`; `check_chunk` checks a chunk in the pass that measures it,
`add_measured_chunk` in the pass that folds it live), used where the processor folds CRCs and
the check against zlib passed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import subprocess
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from coordinator.aggregation.native_build import bind, build, check, crc32_folds
from shared.payload import PayloadCheck

log = logging.getLogger(__name__)

_lock = threading.Lock()


class Loops(ctypes.CDLL):
    """The loaded library, and whether its CRC-32 serves (crc32)."""

    folds_crc32 = False


_loaded: list[Loops | None] = []  # empty until the first call decides
# The cores beyond the calling thread's: one chunk's loop at a time runs on all of them, any
# other beside it on its own thread (each calling thread would start an OpenMP team of its own,
# and uploads are received on several threads at once).
_team = threading.Lock()


def library() -> Loops | None:
    """The loaded loops, or None where ATen's ops must serve (decided once per process)."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """Inside the block, this process runs as one without the loops does (ATen's ops serve),
    as after a failed build or check: for benchmarks that compare the two, and tests of the
    fallback. Not for a coordinator with rounds in flight: what it folds inside and outside
    the block may differ in the last bits of its block norms."""
    library()
    with _lock:
        saved = list(_loaded)
        _loaded[:] = [None]
    try:
        yield
    finally:
        with _lock:
            _loaded[:] = saved


def _load() -> Loops | None:
    if os.environ.get("FEDMLLM_COMPILE", "1") == "0":
        return None
    fallback = "ATen's add and norm serve instead, slower"
    try:
        lib = Loops(str(build()))
        bind(lib)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning(
            "native fold loops unavailable (%s); %s: install a C compiler (gcc) or set CC",
            exc,
            fallback,
        )
        return None
    try:
        check(lib)
    except ValueError as exc:
        log.warning("native fold loops not used: %s; %s", exc, fallback)
        return None
    try:
        lib.folds_crc32 = crc32_folds(lib)
    except ValueError as exc:
        log.warning("native CRC-32 not used: %s; zlib's serves instead, slower", exc)
    log.info("native fold loops loaded from %s", lib._name)
    return lib


def _take_team() -> int:
    """How many threads a chunk's loop may run on: all of torch's where no other loop holds
    them (the caller then holds them until it calls _give_team), else 0, the calling thread
    alone. Which threads add or measure a block changes none of its bits. Two plain calls, not
    a context manager: they come with every chunk received (see measure_chunk)."""
    return torch.get_num_threads() if _team.acquire(blocking=False) else 0


def _give_team(threads: int) -> None:
    """Let go of the threads _take_team gave (none if it gave 0)."""
    if threads:
        _team.release()


def _call_read(
    lib: ctypes.CDLL,
    total: int,
    count: int,
    fds: Sequence[int],
    offset: int,
    alphas: Sequence[float],
    *,
    write: bool,
    widened: bool = False,
) -> tuple[int, int]:
    """(0, 0), or (j + 1, errno) for the file that could not be read."""
    error = ctypes.c_int(0)
    threads = _take_team()
    try:
        failed = lib.add_read(
            total,
            (ctypes.c_int * len(fds))(*fds),
            offset,
            (ctypes.c_float * len(alphas))(*alphas),
            len(fds),
            int(write),
            int(widened),
            count,
            threads or 1,
            ctypes.byref(error),
        )
    finally:
        _give_team(threads)
    return failed, error.value


def _contiguous_float32(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def _measurable(values: torch.Tensor) -> bool:
    """float32 or bfloat16 values the loops can read in place."""
    return values.dtype in (torch.float32, torch.bfloat16) and values.is_contiguous()


def block_norms(values: torch.Tensor, blocks: int) -> torch.Tensor | None:
    """The L2 norm of each of `blocks` equal blocks of float32 or bfloat16 `values` (the
    caller decides whether the loops serve bfloat16: kernels.native_bfloat16), in one pass;
    None where they cannot serve.

    The values measured alone are a chunk that this thread has just checked, in its core's
    cache (its last blocks in the core's own): the calling thread takes the blocks from the
    last one down, and torch's other threads, where no other upload's loop holds them, from
    the first one up. Measured over 150M values in fresh 4 MiB chunks, each just checked (ad
    hoc): one thread 7.3 ms in the slower memory phase and 7.4-8.4 in the faster, two 5.0
    and 5.8-7.8 (the faster phase's cores are far apart, docs/benchmarks.md); from the
    first block up on one thread 7.5 and 8.9."""
    lib = library()
    if lib is None or not _measurable(values) or values.numel() % blocks:
        return None
    norms = torch.empty(blocks, dtype=torch.float32)
    widened = values.dtype == torch.bfloat16
    threads = _take_team()
    try:
        lib.block_norms(
            values.data_ptr(),
            blocks,
            values.numel() // blocks,
            norms.data_ptr(),
            threads or 1,
            widened,
        )
    finally:
        _give_team(threads)
    return norms


def add_measured(
    total: torch.Tensor, values: torch.Tensor, alpha: float, *, write: bool, size: int
) -> torch.Tensor | None:
    """total += alpha * values (total = alpha * values if `write`), returning the norm of each
    block of `size` values from the same pass: float32 values as ATen's add_ (mul) adds them,
    bit for bit, bfloat16 ones widened as the compiled widening kernels add them (the caller
    decides whether the loops serve those: kernels.native_bfloat16); None (and nothing added)
    where the loops cannot serve."""
    lib = library()
    if (
        lib is None
        or not _contiguous_float32(total)
        or not _measurable(values)
        or total.numel() != values.numel()
        or values.numel() % size
    ):
        return None
    blocks = values.numel() // size
    norms = torch.empty(blocks, dtype=torch.float32)
    threads = _take_team()
    try:
        lib.add_measured(
            total.data_ptr(), values.data_ptr(), alpha, write, blocks, size, norms.data_ptr(),
            threads or 1, values.dtype == torch.bfloat16,
            *(None, 0, None, 0, None, None, None),  # no spooled updates, no check
        )  # fmt: skip
    finally:
        _give_team(threads)
    return norms


def add_read(
    total: torch.Tensor,
    spools: Sequence[tuple[int, Path]],
    element: int,
    alphas: Sequence[float],
    *,
    write: bool = False,
    dtype: str = "float32",
) -> bool:
    """total += alpha * values for each spooled update (an open file and its path) in turn,
    its values those from `element` on, read from the files, not mapped; the first written
    (total = alpha * values) if `write`. float32 values as ATen's add_ (and mul) one after
    another, bit for bit; bfloat16 ones widened, as the compiled widening kernels add them
    (kernels.py checks that before it uses this). False (and nothing added) where the caller's
    kernels must serve; OSError, naming the file, if one cannot be read in full (the sums then
    hold part of the additions)."""
    lib = library()
    if (
        lib is None
        or dtype not in ("float32", "bfloat16")
        or not _contiguous_float32(total)
        or len(spools) != len(alphas)
    ):
        return False
    fds, widened = [fd for fd, _ in spools], dtype == "bfloat16"
    offset = element * (2 if widened else 4)
    failed, code = _call_read(
        lib, total.data_ptr(), total.numel(), fds, offset, alphas, write=write, widened=widened
    )
    _raise_unread(spools, failed, code)
    return True


def _raise_unread(spools: Sequence[tuple[int, Path]], failed: int, code: int) -> None:
    """OSError naming the spool that a loop could not read (`failed`: its index + 1; 0 if all
    were read)."""
    if failed:
        path = spools[failed - 1][1]
        if code == errno.ENODATA:
            raise OSError(code, f"spooled update {path} is truncated")
        raise OSError(code, f"spooled update {path} could not be read: {os.strerror(code)}")


def measure_chunk(chunk: bytes, blocks: int, size: int, norms: int, *, widened: bool) -> bool:
    """block_norms of a received chunk's values (float32, or bfloat16 if `widened`): `blocks`
    whole blocks of `size` values filling `chunk`, read from the bytes object's own buffer (no
    tensor made of it), their norms written to the float32s at address `norms`. False (and
    nothing written) where the loops cannot serve.

    Every torch call costs 10-20 us in a chunk's path, its code and data having been pushed out
    of the core's caches by the 4 MiB just received, against 1-3 us in a tight loop (on an
    Intel Xeon of 1 MiB L2, ad hoc, for each fresh chunk of 150M float32 values: `frombuffer`
    20, an `empty` for the norms 15, their `tolist` 10); the loops called on the bytes and an
    address cost 5-9 us of Python a chunk in all. Each Python call on the way costs some 5-10 us
    too: a live chunk's whole path through the coordinator's layers took 53-81 us of Python,
    against 111-122 through tensors, in runs alternated within the hour."""
    lib = library()
    if lib is None or len(chunk) != blocks * size * (2 if widened else 4):
        return False
    threads = _take_team()
    try:
        lib.block_norms(chunk, blocks, size, norms, threads or 1, widened)
    finally:
        _give_team(threads)
    return True


def check_chunk(
    chunk: bytes, blocks: int, size: int, norms: int, *, widened: bool, crc: int
) -> tuple[int, float] | None:
    """measure_chunk of a received chunk the payload check has not seen, in the same pass as
    its CRC-32 (`crc`: the register of the bytes before), on the calling thread: the chunk is
    fetched from memory once, not once to check and again to measure. (the register after,
    seconds spent in the CRC), or None (nothing checked or measured) where the loops or their
    CRC-32 cannot serve."""
    lib = library()
    if lib is None or not lib.folds_crc32 or len(chunk) != blocks * size * (2 if widened else 4):
        return None
    register, checking = ctypes.c_uint32(crc), ctypes.c_int64(0)
    lib.check_norms(
        chunk, blocks, size, norms, widened, ctypes.byref(register), ctypes.byref(checking)
    )
    return register.value, checking.value * 1e-9


def add_measured_chunk(
    total: int, chunk: bytes, alpha: float, *, write: bool, blocks: int, size: int, norms: int,
    widened: bool, spools: Sequence[tuple[int, Path]] = (), element: int = 0,
    alphas: Sequence[float] = (), check: PayloadCheck | None = None,
) -> bool:  # fmt: skip
    """add_measured of a received chunk's values (as measure_chunk reads and measures them)
    into the float32 values at address `total`, `blocks * size` of them, a stretch of a sum the
    caller holds; then, into each block as soon as the chunk's values are in it, the spooled
    updates (their values from data element `element`, times `alphas`), as add_read adds them:
    the updates a live fold carries, added while the block is in the core's cache rather than
    read back from memory (this machine's cache beyond the core's own holds nothing of a 4 MiB
    stretch, docs/benchmarks.md). The same operations in the same order per value as the two
    loops one after the other, so the same bits. With a `check` (a CRC-32 one, where
    `crc_folds()`), the chunk passes through it in the same pass, on every thread the loop runs
    on, so that it is fetched from memory once rather than once to check and again to add
    (docs/benchmarks.md); the check then has the chunk even if a spool cannot be read. False
    (nothing added or checked) where the loops cannot serve; OSError, naming the file, if a
    spool cannot be read in full (the sums then hold part of it all)."""
    lib = library()
    if lib is None or len(chunk) != blocks * size * (2 if widened else 4):
        return False
    if check is not None and not lib.folds_crc32:
        return False
    fds = (ctypes.c_int * len(spools))(*(fd for fd, _ in spools))
    factors = (ctypes.c_float * len(alphas))(*alphas)
    error = ctypes.c_int(0)
    offset = element * (2 if widened else 4)
    register = ctypes.c_uint32(0 if check is None else check.crc32)
    checking = ctypes.c_int64(0)
    threads = _take_team()
    try:
        failed = lib.add_measured(
            total, chunk, alpha, write, blocks, size, norms, threads or 1, widened,
            fds, offset, factors, len(spools), ctypes.byref(error),
            None if check is None else ctypes.byref(register), ctypes.byref(checking),
        )  # fmt: skip
    finally:
        _give_team(threads)
    if failed < 0:
        raise MemoryError("no memory for the payload check's registers of a chunk's blocks")
    if check is not None:
        check.checked(register.value, len(chunk), checking.value * 1e-9)
    _raise_unread(spools, failed, error.value)
    return True


def crc_folds() -> bool:
    """Whether the loops serve and their CRC-32 folds here (checked against zlib at load): a
    chunk may then be checked in the pass that measures it (check_chunk) or adds it
    (add_measured_chunk)."""
    lib = library()
    return lib is not None and lib.folds_crc32


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """zlib.crc32(data, value), folded by crc32.c where it serves and `data` is a bytes object
    (as gRPC hands every chunk over): on an Intel Xeon (Cascade Lake) 0.35 ms a fresh 4 MiB
    chunk against zlib's 2.5, and the chunk then left in the core's caches for the measuring
    that follows (docs/benchmarks.md); zlib's elsewhere."""
    lib = library()
    if type(data) is bytes and lib is not None and lib.folds_crc32:
        return int(lib.crc32_update(value, data, len(data)))
    return zlib.crc32(data, value)


def add_summed(x: torch.Tensor, delta: torch.Tensor, alpha: float) -> tuple[float, float] | None:
    """x += alpha * delta in place, as ATen's add_ does, returning the sum of the new x (non-
    finite if any value is) and the sum of the squares of delta, from the same pass; None (and
    nothing added) where ATen must serve."""
    lib = library()
    if lib is None or not _contiguous_float32(x, delta) or x.numel() != delta.numel():
        return None
    squares = ctypes.c_double(0.0)
    total: float = lib.add_summed(
        x.data_ptr(),
        delta.data_ptr(),
        alpha,
        x.numel(),
        torch.get_num_threads(),
        ctypes.byref(squares),
    )
    return total, squares.value
