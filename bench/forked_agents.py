"""Silo agents forked from a server that has already imported torch, transformers and peft.

The grid starts eleven agents per partition, and importing those libraries is most of an
agent's start-up (about 6 CPU-seconds each on this machine, 70-80 s a partition on 2 cores).
Each agent is still its own process running `silo-agent` with its own arguments, log, mutual
TLS identity and gRPC connection; only the imports are done once. The fork server is a fresh
interpreter (multiprocessing's "forkserver"), so no thread or gRPC state of the grid's own
process is inherited.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

# Heavy imports an agent needs; gRPC is left out so that nothing the fork server holds is
# shared with a forked agent's channels.
_PRELOAD = [
    "torch",
    "transformers",
    "peft",
    "transformers.models.idefics3.modeling_idefics3",
    "silo_agent.model",
    "silo_agent.trainer",
    "silo_agent.evaluator",
]
_STOP_TIMEOUT_S = 15.0


def _run_agent(argv: list[str], log: str) -> None:
    """The forked agent: stdout and stderr into its log, then `silo-agent ARGV`."""
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.close(handle)
    from silo_agent.__main__ import main

    main(argv)


@contextlib.contextmanager
def forked_agents() -> Iterator[list[BaseProcess]]:
    """Agents started through `start_agent` into the yielded list are terminated (then
    killed) on the way out."""
    started: list[BaseProcess] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            if process.exitcode is None:
                process.terminate()
        for process in reversed(started):
            process.join(_STOP_TIMEOUT_S)
            if process.exitcode is None:
                process.kill()
                process.join()


def start_agent(argv: list[str], log: Path) -> BaseProcess:
    """`silo-agent ARGV` as a process forked from the preloaded server, logging to `log`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    process = context.Process(target=_run_agent, args=(argv, str(log)))
    process.start()
    return process
