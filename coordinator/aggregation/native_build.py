"""Building the native fold loops (native.c) and payload check (crc32.c) for this machine:
once per source, compiler, flags and platform, with the system's C compiler, cached under
~/.cache/fedmllm (or $XDG_CACHE_HOME/fedmllm); and checking them against ATen (the check
against zlib) once loaded. native.py loads what this builds, and uses it only once checked."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import platform
import random
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import torch

from shared.cache import cache_dir

SOURCES = tuple(Path(__file__).with_name(name) for name in ("native.c", "crc32.c"))
FLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared")


def build() -> Path:
    """The shared library for this source, compiler and platform, built if not cached."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (set CC)")
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    key = hashlib.sha256(
        "\0".join(
            [
                *(source.read_text() for source in SOURCES),
                compiler,
                version,
                *FLAGS,
                platform.machine(),
            ]
        ).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"native-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # code this process loads
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        built = Path(work) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, *map(str, SOURCES), "-o", str(built), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise OSError(f"{compiler} failed on {' and '.join(s.name for s in SOURCES)}: {last}")
        os.replace(built, target)  # atomic: a process beside this one loads a whole file
    return target


def bind(lib: ctypes.CDLL) -> None:
    """Set the argument and result types of `lib`'s loops."""
    pointer, size, f32, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.block_norms.argtypes = [pointer, size, size, pointer, flag, flag]
    lib.block_norms.restype = None
    lib.add_measured.argtypes = [
        *(pointer, pointer, f32, flag, size, size, pointer, flag, flag),
        *(pointer, size, pointer, flag, pointer, pointer, pointer),
    ]
    lib.add_measured.restype = flag
    lib.add_read.argtypes = [pointer, pointer, size, pointer, flag, flag, flag, size, flag, pointer]
    lib.add_read.restype = flag
    lib.add_summed.argtypes = [pointer, pointer, f32, size, flag, pointer]
    lib.add_summed.restype = ctypes.c_double
    lib.check_norms.argtypes = [pointer, size, size, pointer, flag, pointer, pointer]
    lib.check_norms.restype = None
    lib.crc32_update.argtypes = [ctypes.c_uint32, pointer, size]
    lib.crc32_update.restype = ctypes.c_uint32
    lib.crc32_folds.argtypes = []
    lib.crc32_folds.restype = flag
    lib.crc32_shift.argtypes = [size]
    lib.crc32_shift.restype = ctypes.c_uint32
    lib.crc32_combine.argtypes = [ctypes.c_uint32] * 3
    lib.crc32_combine.restype = ctypes.c_uint32


def check(lib: ctypes.CDLL) -> None:
    """Raise ValueError unless the loops add as ATen does, bit for bit, and measure as
    ATen's norm does (to float32 rounding) on this machine (on torch's threads: which thread
    adds a value changes none of its bits)."""
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    count, size = 3 * 4096 + 37, 4096 + 37  # every lane, and a tail

    def add(total: torch.Tensor, values: torch.Tensor, alpha: float, write: bool) -> torch.Tensor:
        norms = torch.empty(values.numel() // size)
        blocks, at = values.numel() // size, total.data_ptr()
        lib.add_measured(
            at, values.data_ptr(), alpha, write, blocks, size, norms.data_ptr(), threads, 0,
            None, 0, None, 0, None, None, None,
        )  # fmt: skip
        return norms

    values, start = torch.randn(2, 3 * size, generator=generator) * 10
    for alpha in (0.3, 1.0, 1 / 3):
        expected, got = start.clone().add_(values, alpha=alpha), start.clone()
        add(got, values, alpha, False)
        if not torch.equal(got, expected):
            raise ValueError("its additions differ from ATen's add_ on this machine")
        got_norms = add(got, values, alpha, True)
        if not torch.equal(got, torch.mul(values, alpha)):
            raise ValueError("its products differ from ATen's mul on this machine")
        weights = start[:count].clone()
        squares = ctypes.c_double(0.0)
        summed = lib.add_summed(
            weights.data_ptr(), values.data_ptr(), alpha, count, 1, ctypes.byref(squares)
        )
        if not torch.equal(weights, start[:count].clone().add_(values[:count], alpha=alpha)):
            raise ValueError("its summing add differs from ATen's add_ on this machine")
        if abs(summed - float(weights.double().sum())) > 1e-3 * float(weights.abs().sum()):
            raise ValueError("its weight sum is wrong on this machine")
        exact = float(values[:count].double().square().sum())
        if abs(squares.value - exact) > 1e-9 * exact:
            raise ValueError("its sum of squares is wrong on this machine")
    norms = torch.linalg.vector_norm(values.view(3, size), dim=1)
    if not torch.allclose(got_norms, norms, rtol=1e-5, atol=0.0):
        raise ValueError("its block norms differ from ATen's on this machine")
    updates, alphas = [values, values.flip(0), start], [0.3, 1 / 3, -2.5]
    with contextlib.ExitStack() as opened:
        files = [opened.enter_context(tempfile.TemporaryFile()) for _ in updates]
        for file, update in zip(files, updates, strict=True):
            file.write(update.numpy().tobytes())
            file.flush()
        for write in (False, True):
            expected, got = start[1:].clone(), start[1:].clone()
            for i, (update, alpha) in enumerate(zip(updates, alphas, strict=True)):
                if i == 0 and write:
                    torch.mul(update[1:], alpha, out=expected)
                else:
                    expected.add_(update[1:], alpha=alpha)
            fds = (ctypes.c_int * len(files))(*(f.fileno() for f in files))
            factors = (ctypes.c_float * len(alphas))(*alphas)
            error = ctypes.c_int(0)
            if lib.add_read(
                got.data_ptr(), fds, 4, factors, len(files), write, 0, got.numel(), threads,
                ctypes.byref(error),
            ):  # fmt: skip
                raise ValueError(f"it could not read a spooled file: {os.strerror(error.value)}")
            if not torch.equal(got, expected):
                raise ValueError("its additions from spooled files differ from ATen's add_")


def crc32_folds(lib: ctypes.CDLL) -> bool:
    """Whether `lib`'s CRC-32 folds on this processor (else zlib's serves); ValueError if it
    folds but differs from zlib.crc32 somewhere among every length of its loops and tail, from
    any start and any register, or if checking and measuring in one pass (check_norms) gives
    other norms than measuring alone (block_norms) or another register than zlib's, or
    checking and adding in one pass (add_measured with a register) other sums, norms or
    register than adding alone and zlib."""
    if not lib.crc32_folds():
        return False
    generator = random.Random(0)
    data = generator.randbytes(4096 + 83)
    for length in (*range(0, 200), 4096 + 64, 4096 + 80):
        start, before = generator.randrange(16), generator.getrandbits(32)
        piece = data[start : start + length]
        if lib.crc32_update(before, piece, len(piece)) != zlib.crc32(piece, before):
            raise ValueError(f"its CRC-32 of {length} bytes differs from zlib's on this machine")
    size = 3 * 4096 + 37  # several check tiles, and a tail
    values = torch.randn(2 * size, generator=torch.Generator().manual_seed(1)).numpy().tobytes()
    alone, both = (ctypes.c_float * 2)(), (ctypes.c_float * 2)()
    register, spent = ctypes.c_uint32(7), ctypes.c_int64(0)
    lib.block_norms(values, 2, size, ctypes.addressof(alone), 1, 0)
    lib.check_norms(
        values, 2, size, ctypes.addressof(both), 0, ctypes.byref(register), ctypes.byref(spent)
    )
    if bytes(both) != bytes(alone) or register.value != zlib.crc32(values, 7):
        raise ValueError("its checking and measuring in one pass differ from the two apart")
    _check_checked_adds(lib, values, size)
    return True


def _check_checked_adds(lib: ctypes.CDLL, values: bytes, size: int) -> None:
    """ValueError unless adding (or writing) and measuring with the check in the same pass,
    on one thread and on torch's, leaves the same sums and norms, bit for bit, as without it,
    and zlib's register (the blocks' CRCs carried on in order)."""
    pointer = lambda buffer: ctypes.addressof(buffer)  # noqa: E731
    for write, widened, threads in itertools.product((0, 1), (0, 1), {1, torch.get_num_threads()}):
        blocks = 4 if widened else 2  # all of `values`: 16-bit ones, or float32 ones
        got = [((ctypes.c_float * (blocks * size))(), (ctypes.c_float * blocks)()) for _ in "ab"]
        register, spent = ctypes.c_uint32(11), ctypes.c_int64(0)
        for (total, norms), checked in zip(got, (False, True), strict=True):
            ctypes.memmove(total, values, len(values))
            lib.add_measured(
                pointer(total), values, 0.3, write, blocks, size, pointer(norms),
                threads, widened, None, 0, None, 0, None,
                ctypes.byref(register) if checked else None, ctypes.byref(spent),
            )  # fmt: skip
        (plain, plain_norms), (fused, fused_norms) = got
        if (
            bytes(fused) != bytes(plain)
            or bytes(fused_norms) != bytes(plain_norms)
            or register.value != zlib.crc32(values, 11)
        ):
            raise ValueError("its checking and adding in one pass differ from the two apart")
