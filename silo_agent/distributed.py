"""A silo on several GPUs of one host: rank 0 alone talks to the coordinator, hands each round
to the other ranks and uploads what they all trained; the coordinator sees one silo."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import Store, TCPStore

from shared.cli import usage_error
from shared.silo_data import Sample
from shared.tensor_codec import StateDict
from silo_agent.control_variates import ControlVariates
from silo_agent.failures import TrainingFailed
from silo_agent.hardware import TrainingHardware, hardware_from_arguments
from silo_agent.model import SiloModel
from silo_agent.replicas import SiloGroup, silo_group
from silo_agent.trainer import LocalPlan, LocalResult, train_round

log = logging.getLogger(__name__)
Layout = tuple[tuple[str, torch.Size, torch.dtype], ...]  # names, shapes, dtypes in order
POLL_S = 0.2  # how often a waiting rank looks for rank 0's next round


@dataclass(frozen=True)
class RoundAnnouncement:
    """What rank 0 tells the other ranks before a round; the tensors follow by broadcast."""

    plan: LocalPlan | None  # None: the agent stops
    label: str = ""
    adapter: Layout = ()  # the global adapter's
    controls: Layout = ()  # SCAFFOLD's server variate's, and the silo's c_k in it; () if none


class RoundTrainer:
    """`train_round` with this silo's hardware settings. In a group of processes, rank 0 calls
    it for every round task and the other ranks `follow`; the delta is all-reduced."""

    def __init__(
        self, *, hardware: TrainingHardware, group: SiloGroup, store: Store | None = None
    ) -> None:
        self.hardware, self.group, self._store = hardware, group, store
        self._announced = 0

    @property
    def follower(self) -> bool:
        return self.group.rank > 0

    def __call__(
        self,
        silo: SiloModel,
        samples: Sequence[Sample],
        plan: LocalPlan,
        global_state: StateDict,
        *,
        server_control: StateDict | None = None,
        controls: ControlVariates | None = None,
        label: str = "train",
    ) -> LocalResult:
        if self.group.distributed:
            variates: StateDict = {}
            if server_control is not None and controls is not None:
                variates = server_control
            self._announce(RoundAnnouncement(plan, label, _layout(global_state), _layout(variates)))
            self.group.broadcast(global_state)
            if variates and controls is not None:
                self.group.broadcast(variates)
                self.group.broadcast(
                    {
                        n: controls.local.get(n, torch.zeros_like(c)).to(c.dtype)
                        for n, c in variates.items()
                    }
                )
        return self._train(silo, samples, plan, global_state, server_control, controls, label)

    def _train(
        self,
        silo: SiloModel,
        samples: Sequence[Sample],
        plan: LocalPlan,
        global_state: StateDict,
        server_control: StateDict | None,
        controls: ControlVariates | None,
        label: str,
    ) -> LocalResult:
        result = train_round(
            silo,
            samples,
            plan,
            global_state,
            server_control=server_control,
            controls=controls,
            label=label,
            hardware=self.hardware,
            group=self.group,
        )
        control_delta = result.control_delta
        return replace(
            result,
            delta=self.group.mean(result.delta),
            control_delta=self.group.mean(control_delta) if control_delta is not None else None,
        )

    def follow(self, silo: SiloModel, samples: Sequence[Sample]) -> None:
        """Ranks > 0: train each round rank 0 announces, until it stops. A failure that rank 0
        meets at the same step (batching, a non-finite loss) ends only that round."""
        while (task := self._next_announcement()).plan is not None:
            global_state = self.group.broadcast(_zeros(task.adapter))
            server_control, controls = None, None
            if task.controls:
                server_control = self.group.broadcast(_zeros(task.controls))
                controls = ControlVariates()
                controls.local = self.group.broadcast(_zeros(task.controls))
            try:
                self._train(
                    silo, samples, task.plan, global_state, server_control, controls, task.label
                )
            except TrainingFailed as exc:
                log.info("rank %d: %s ended on every rank (%s)", self.group.rank, task.label, exc)
            except Exception as exc:  # this rank alone: torchrun stops the group
                first_line = (str(exc).strip().splitlines() or [""])[0]
                raise SystemExit(
                    f"silo-agent: rank {self.group.rank}: {task.label}: "
                    f"{type(exc).__name__}: {first_line}"
                ) from exc

    def close(self) -> None:
        """Rank 0 at exit: tell the other ranks to stop (they also stop when rank 0's store
        goes away before they read it, or when a signal stopped them first)."""
        if self._store is None or self.follower:
            return
        with contextlib.suppress(dist.DistError):
            self._announce(RoundAnnouncement(plan=None))

    def _announce(self, announcement: RoundAnnouncement) -> None:
        assert self._store is not None
        self._announced += 1
        value = pickle.dumps(announcement)
        self._store.set(f"round/{self._announced}", value)  # type: ignore[arg-type]  # takes bytes

    def _next_announcement(self) -> RoundAnnouncement:
        """Rank 0's next round, waited for without a collective (which would time out while
        the silo waits hours for a run); rank 0 gone (its store with it) means stop."""
        assert self._store is not None
        self._announced += 1
        key = f"round/{self._announced}"
        try:
            while not self._store.check([key]):
                time.sleep(POLL_S)
            announcement: RoundAnnouncement = pickle.loads(self._store.get(key))
        except dist.DistNetworkError:
            return RoundAnnouncement(plan=None)
        return announcement


def _layout(state: StateDict) -> Layout:
    return tuple((name, tensor.shape, tensor.dtype) for name, tensor in state.items())


def _zeros(layout: Layout) -> StateDict:
    """Tensors to receive a broadcast of this layout into."""
    return {name: torch.zeros(shape, dtype=dtype) for name, shape, dtype in layout}


def round_trainer(args: argparse.Namespace, silo: SiloModel) -> RoundTrainer:
    """The trainer the flags ask for; under torchrun, joins the silo's group of processes
    (rank 0 serves the announcements' store and tells the others to stop at exit)."""
    group = silo_group(device=silo.device, timeout_s=args.dist_timeout)
    store = None
    if group.distributed:
        master = TCPStore("127.0.0.1", 0, is_master=True) if group.rank == 0 else None
        ports = [master.port if master is not None else 0]
        dist.broadcast_object_list(ports, src=0)
        store = master or TCPStore("127.0.0.1", ports[0], is_master=False)
        store.set_timeout(timedelta(seconds=args.dist_timeout))
    trainer = RoundTrainer(
        hardware=hardware_from_arguments(args, silo.device), group=group, store=store
    )
    if group.distributed and not trainer.follower:
        atexit.register(trainer.close)
        log.info(
            "%d training processes (%s); this one, rank 0, talks to the coordinator",
            group.world_size,
            dist.get_backend(),
        )
    return trainer


def start_processes(args: argparse.Namespace, argv: list[str]) -> None:
    """Refuse flag combinations that cannot work; with `--nproc-per-node N` outside torchrun,
    run this same command as N processes under torchrun's launcher and exit with them."""
    problem = _gpu_problem(args)
    if problem:
        raise usage_error(problem)
    if args.nproc_per_node == 1 or "LOCAL_RANK" in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launch = ["--standalone", f"--nproc-per-node={args.nproc_per_node}", "--module", "silo_agent"]
    try:
        run(get_args_parser().parse_args([*launch, *argv]))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        sys.exit(f"silo-agent: training process {rank} exited with code {failure.exitcode}")
    except SignalException as exc:
        log.info("stopped by signal %s", exc.sigval.name)
    sys.exit(0)


def _gpu_problem(args: argparse.Namespace) -> str:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.device != "cpu" and 0 < gpus < args.nproc_per_node:
        return f"--nproc-per-node {args.nproc_per_node}, but this host has {gpus} GPU(s)"
    return ""
