"""bench.transport waits for each round's task while the coordinator's run is running, and stops
with the coordinator's own reason, in one line, as soon as it is not.

The run states come as the coordinator's GetStatus reports them (RunStatus messages): making a
real coordinator pause needs its checkpoint disk to fill up, which a test cannot arrange here.
"""

from __future__ import annotations

import queue
import time

import pytest

from bench.transport import next_task
from shared.wire.v1 import federation_pb2 as pb

FULL = (
    "checkpoint directory /srv/checkpoints full: about 599,785,480 bytes needed, 358,129,664 "
    "free; the run resumes when there is room again (or: fedmllm-admin resume)"
)


def running() -> pb.RunStatus:
    return pb.RunStatus(state=pb.RUN_STATE_RUNNING)


def test_a_task_that_comes_while_the_run_is_running_is_returned() -> None:
    tasks: queue.Queue[pb.RoundTask] = queue.Queue()
    asked: list[float] = []

    def status() -> pb.RunStatus:  # the task comes once the run's state has been asked twice
        asked.append(time.monotonic())
        if len(asked) == 2:
            tasks.put(pb.RoundTask(round=3))
        return running()

    assert next_task(tasks, status, poll_s=0.01).round == 3
    assert len(asked) == 2, "the run's state is asked while no task comes, and only then"


def test_a_paused_run_stops_the_benchmark_at_once_with_its_reason() -> None:
    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        next_task(
            queue.Queue(),
            lambda: pb.RunStatus(state=pb.RUN_STATE_PAUSED, message=FULL),
            wait_s=600,
            poll_s=0.05,
        )
    assert time.monotonic() - started < 5
    line = str(stopped.value)
    assert line.startswith("the coordinator's run is paused, not running: checkpoint directory")
    assert FULL in line and "\n" not in line


def test_a_failed_run_without_a_message_still_says_so() -> None:
    with pytest.raises(SystemExit, match="run is failed, not running: no reason given"):
        next_task(queue.Queue(), lambda: pb.RunStatus(state=pb.RUN_STATE_FAILED), poll_s=0.01)


def test_a_running_run_that_sends_nothing_times_out_in_one_line() -> None:
    with pytest.raises(SystemExit, match=r"no round task came in 0 s while .* was running"):
        next_task(queue.Queue(), running, wait_s=0.1, poll_s=0.05)
