"""Building the native fold loops (native.c) for this machine: once per source, compiler,
flags and platform, with the system's C compiler, cached under ~/.cache/fedmllm (or
$XDG_CACHE_HOME/fedmllm). native.py loads and checks what this builds."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from shared.cache import cache_dir

SOURCE = Path(__file__).with_name("native.c")
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
        "\0".join([SOURCE.read_text(), compiler, version, *FLAGS, platform.machine()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"native-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # code this process loads
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        built = Path(work) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise OSError(f"{compiler} failed on {SOURCE.name}: {last}")
        os.replace(built, target)  # atomic: a process beside this one loads a whole file
    return target


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """`lib` with its loops' argument and result types set."""
    pointer, size, f32, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.block_norms.argtypes = [pointer, size, size, pointer, flag, flag]
    lib.block_norms.restype = None
    lib.add_measured.argtypes = [pointer, pointer, f32, flag, size, size, pointer, flag, flag]
    lib.add_measured.restype = None
    lib.add_read.argtypes = [pointer, pointer, size, pointer, flag, flag, flag, size, flag, pointer]
    lib.add_read.restype = flag
    lib.add_summed.argtypes = [pointer, pointer, f32, size, flag, pointer]
    lib.add_summed.restype = ctypes.c_double
    return lib
