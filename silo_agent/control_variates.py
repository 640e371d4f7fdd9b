"""SCAFFOLD's silo-side control variate c_k, moved only by changes the coordinator confirms.

The server's c moves when a round is aggregated and saved; c_k must move then too, and only
then, or c stops being the mean of the silos' variates. So a change proposed with an update is
kept aside, and applied when a later task names that update's task as confirmed (a saved round
aggregated it); any other proposal (an attempt abandoned for want of silos, a round redone, a
round lost to a coordinator crash before its save) is dropped.
"""

from __future__ import annotations

import torch

from shared.tensor_codec import StateDict


class ControlVariates:
    """c_k of one run at a time, with the change proposed by each update still unconfirmed."""

    def __init__(self) -> None:
        self.run_id = ""
        self.local: StateDict = {}
        self._proposed: dict[str, StateDict] = {}  # task id -> change it carried

    def use_run(self, run_id: str) -> None:
        """A new run starts from c_k = 0, as its server variate starts from c = 0."""
        if run_id != self.run_id:
            self.run_id, self.local, self._proposed = run_id, {}, {}

    def confirm(self, task_id: str) -> None:
        """Apply the change proposed with `task_id` (a saved round aggregated it, "" if none
        has been) and drop every other proposal: none can be aggregated any more."""
        change = self._proposed.get(task_id) if task_id else None
        if change is not None:
            self.local = {n: self.local.get(n, torch.zeros_like(c)) + c for n, c in change.items()}
        self._proposed.clear()

    def propose(self, task_id: str, change: StateDict) -> None:
        """Keep the change an accepted update carried, as the coordinator received it."""
        self._proposed[task_id] = change

    def correction(self, server: StateDict) -> StateDict:
        """c - c_k, added to each local gradient."""
        return {n: c - self.local.get(n, torch.zeros_like(c)) for n, c in server.items()}

    def proposal(self, server: StateDict, delta: StateDict, *, steps: int, lr: float) -> StateDict:
        """Option II: c_k+ = c_k - c - delta / (K lr); returns c_k+ - c_k (not yet applied)."""
        return {n: -server[n] - delta[n].float() / (steps * lr) for n in server}
