"""One local optimizer step: its micro-batches accumulated, in the silo's precision, over
every training process, then the corrected, clipped update applied."""

from __future__ import annotations

import logging
import math

import torch

from silo_agent.failures import TrainingFailed, step_failures
from silo_agent.hardware import grad_scaler
from silo_agent.interfaces import to_device
from silo_agent.model import SiloModel
from silo_agent.regularizers import ProximalTerms
from silo_agent.replicas import SiloGroup
from silo_agent.step_loader import MicroBatch

log = logging.getLogger(__name__)


class LocalSteps:
    """Steps of one round. Each micro-batch's mean loss is weighted by its share of the step's
    answer tokens (times the number of processes, which DDP averages over), so that the
    gradient is the one of the whole batch's loss, however the batch is split."""

    def __init__(
        self,
        *,
        silo: SiloModel,
        group: SiloGroup,
        params: dict[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        proximal: ProximalTerms,
        correction: dict[str, torch.Tensor] | None,
    ) -> None:
        self.silo, self.group, self.params = silo, group, params
        self.optimizer, self.proximal, self.correction = optimizer, proximal, correction
        self.network = group.network(silo.model)
        self.scaler = grad_scaler(silo.device, silo.compute_dtype)
        self.skipped = 0  # fp16 steps whose gradients overflowed: not applied
        optimizer.zero_grad(set_to_none=True)  # nothing left over from a round that failed

    def run(self, micro_batches: list[MicroBatch], where: str) -> float:
        """Apply one step; its loss over the whole batch (in step on every process)."""
        total = self._answer_tokens(micro_batches, where)
        summed = torch.zeros((), device=self.silo.device)
        for index, micro in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            summed = summed + self._backward(micro, total, last=last, where=where)
        (loss_sum,) = self.group.sums([summed])
        loss = loss_sum / total if total else math.nan
        if not math.isfinite(loss):
            raise TrainingFailed(reason="non_finite_loss", detail=f"{where}: loss {loss}")
        self._apply()
        return loss

    def _answer_tokens(self, micro_batches: list[MicroBatch], where: str) -> float:
        """The step's answer tokens over all processes; a batching failure on any process
        stops all of them at the same step."""
        failure = next((m.failure for m in micro_batches if m.failure), "")
        tokens = float(sum(m.tokens for m in micro_batches))
        total, failed = self.group.sums([tokens, float(bool(failure))])
        if failure:
            raise TrainingFailed(reason="batching", detail=failure)
        if failed:
            raise TrainingFailed(
                reason="batching",
                detail=f"{where}: another training process of this silo cannot batch its samples",
            )
        return total

    def _backward(self, micro: MicroBatch, total: float, *, last: bool, where: str) -> torch.Tensor:
        """Forward and backward of one micro-batch; its loss times its answer tokens."""
        silo = self.silo
        batch = to_device(micro.batch, silo.device, non_blocking=True)
        weight = micro.tokens * self.group.world_size / total if micro.counted and total else 0.0
        with self.group.accumulating(self.network, last=last), step_failures(silo.family, where):
            loss = silo.forward(batch, network=self.network).loss
            objective = loss.float() * weight
            if last and self.proximal.active:  # once per step: DDP averages identical terms
                objective = objective + self.proximal()
            (self.scaler.scale(objective) if self.scaler else objective).backward()
        if not micro.counted:
            return torch.zeros((), device=silo.device)
        counted: torch.Tensor = loss.detach().float() * micro.tokens
        return counted

    def _apply(self) -> None:
        """SCAFFOLD's correction, clipping at norm 1, the optimizer (skipped by the fp16 loss
        scaler when the gradients overflowed)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.correction is not None:
            for name, param in self.params.items():
                param.grad.add_(self.correction[name])  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm=1.0)
        if self.scaler is None:
            self.optimizer.step()
        else:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped += self.scaler.get_scale() < scale
        self.optimizer.zero_grad(set_to_none=True)

    def applied(self, steps: int, label: str) -> int:
        """Steps whose update was applied: what FedNova and SCAFFOLD normalise by."""
        if self.skipped:
            log.warning(
                "%s: %d of %d fp16 steps overflowed and were skipped", label, self.skipped, steps
            )
        if steps and self.skipped == steps:
            raise TrainingFailed(
                reason="non_finite_loss",
                detail=f"{label}: every fp16 step overflowed; use --precision bf16 or fp32",
            )
        return steps - self.skipped
