"""Run a command under a seccomp allow-list of system calls, as systemd's SystemCallFilter=
does: any other call kills the process (SIGSYS). Usage: seccomp_exec.py CALLS_FILE COMMAND..."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
PR_SET_NO_NEW_PRIVS = 38


def install_filter(calls: set[str]) -> None:
    """Allow `calls` (those this kernel knows) and nothing else, for this process and children."""
    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
    ]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    context = seccomp.seccomp_init(SCMP_ACT_KILL_PROCESS)
    for name in sorted(calls):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number >= 0 and seccomp.seccomp_rule_add(context, SCMP_ACT_ALLOW, number, 0) != 0:
            raise OSError(f"seccomp: cannot allow {name}")
    if ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    if seccomp.seccomp_load(context) != 0:
        raise OSError("seccomp_load failed")


if __name__ == "__main__":
    install_filter(set(Path(sys.argv[1]).read_text().split()))
    os.execvp(sys.argv[2], sys.argv[2:])
