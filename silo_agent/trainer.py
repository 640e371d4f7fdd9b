"""One round of local training: load the global adapter, one epoch of LoRA, return the delta."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from shared.progress import progress
from shared.prompts import PromptVariant
from shared.silo_data import Sample
from shared.tensor_codec import StateDict
from silo_agent.failures import TrainingFailed, step_failures
from silo_agent.model import SiloModel
from silo_agent.regularizers import (
    ProximalTerms,
    decoder_depth,
    masked_layers,
    modality_gamma,
    trainable_by_state_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalPlan:
    """The round task's training settings."""

    learning_rate: float
    local_epochs: int
    batch_size: int
    seed: int
    proximal_mu: float = 0.0  # FedProx
    gamma_max: float = 0.0  # adaptive masked proximal regulariser (0: off)
    mask_skip_layers: int = 4
    prompt_variant: PromptVariant | None = None
    control_variates: bool = False  # SCAFFOLD


@dataclass
class LocalResult:
    """What a silo sends back: the adapter delta, how many samples and steps, the mean loss."""

    delta: StateDict
    num_samples: int
    steps: int
    mean_loss: float
    gamma: float
    control_delta: StateDict | None = None


def load_global_adapter(silo: SiloModel, state: StateDict) -> None:
    result = set_peft_model_state_dict(silo.model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"global adapter has tensors this model lacks, e.g. {unexpected[0]}")


def _batches(samples: Sequence[Sample], plan: LocalPlan, epoch: int) -> list[list[Sample]]:
    generator = torch.Generator().manual_seed(plan.seed * 1_000 + epoch)
    order = torch.randperm(len(samples), generator=generator).tolist()
    return [
        [samples[i] for i in order[start : start + plan.batch_size]]
        for start in range(0, len(order), plan.batch_size)
    ]


class ControlVariates:
    """SCAFFOLD's correction (c - c_k) and the silo's own variate c_k, for one run at a time."""

    def __init__(self) -> None:
        self.run_id = ""
        self.local: StateDict = {}

    def use_run(self, run_id: str) -> None:
        """A new run starts from c_k = 0, as its server variate starts from c = 0."""
        if run_id != self.run_id:
            self.run_id, self.local = run_id, {}

    def correction(self, server: StateDict) -> StateDict:
        return {n: c - self.local.get(n, torch.zeros_like(c)) for n, c in server.items()}

    def proposal(self, server: StateDict, delta: StateDict, *, steps: int, lr: float) -> StateDict:
        """Option II: c_k+ = c_k - c - delta / (K lr); returns c_k+ - c_k (not yet applied)."""
        return {n: -server[n] - delta[n].float() / (steps * lr) for n in server}

    def commit(self, change: StateDict) -> None:
        """Apply a proposal once the coordinator accepted the update that carried it."""
        self.local = {n: self.local.get(n, torch.zeros_like(c)) + c for n, c in change.items()}


def train_round(
    silo: SiloModel,
    samples: Sequence[Sample],
    plan: LocalPlan,
    global_state: StateDict,
    *,
    server_control: StateDict | None = None,
    controls: ControlVariates | None = None,
    label: str = "train",
) -> LocalResult:
    """Train from `global_state` and return (local - global) in the layout's dtypes."""
    samples = [s.rendered(plan.prompt_variant) for s in samples]
    refusal = silo.refusal(samples)
    if refusal is not None:
        raise TrainingFailed(reason="modality", detail=f"{label}: {refusal}")
    load_global_adapter(silo, global_state)
    model = silo.model
    model.train()
    params = trainable_by_state_name(model)
    gamma = modality_gamma(samples, plan.gamma_max) if plan.gamma_max > 0 else 0.0
    mask = masked_layers(decoder_depth(model), plan.mask_skip_layers) if gamma > 0 else set()
    proximal = ProximalTerms(params, global_state, mu=plan.proximal_mu, gamma=gamma, mask=mask)
    if not proximal.masked:
        gamma = 0.0  # no layer to regularise: report what was applied
    correction = None
    if server_control is not None and controls is not None:
        correction = {n: c.to(silo.device) for n, c in controls.correction(server_control).items()}
    optimizer = torch.optim.AdamW(params.values(), lr=plan.learning_rate, weight_decay=0.0)
    losses: list[float] = []
    torch.manual_seed(plan.seed)  # LoRA dropout
    for epoch in range(plan.local_epochs):
        for batch_samples in progress(
            _batches(samples, plan, epoch), desc=f"{label} epoch {epoch + 1}"
        ):
            step = f"{label}: step {len(losses) + 1}"
            batch = silo.batch(batch_samples)
            with step_failures(silo.family, step):
                loss = silo.forward(batch).loss
                if not torch.isfinite(loss):
                    raise TrainingFailed(reason="non_finite_loss", detail=f"{step}: loss {loss}")
                objective = loss + proximal() if proximal.active else loss
                objective.backward()
            if correction is not None:
                for name, param in params.items():
                    param.grad.add_(correction[name])  # type: ignore[union-attr]
            torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    local = get_peft_model_state_dict(model)
    delta = {
        name: (local[name].detach().float().cpu() - start.float()).to(start.dtype)
        for name, start in global_state.items()
    }
    control_delta = None
    if server_control is not None and controls is not None:
        control_delta = controls.proposal(
            server_control, delta, steps=max(len(losses), 1), lr=plan.learning_rate
        )
    return LocalResult(
        delta=delta,
        num_samples=len(samples),
        steps=len(losses),
        mean_loss=sum(losses) / len(losses) if losses else math.nan,
        gamma=gamma,
        control_delta=control_delta,
    )
