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
from silo_agent.control_variates import ControlVariates
from silo_agent.failures import TrainingFailed
from silo_agent.hardware import TrainingHardware
from silo_agent.local_steps import LocalSteps
from silo_agent.model import SiloModel
from silo_agent.regularizers import (
    ProximalTerms,
    decoder_depth,
    masked_layers,
    modality_gamma,
    trainable_by_state_name,
)
from silo_agent.replicas import SiloGroup
from silo_agent.step_loader import round_batches, step_batches

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
    local_optimizer: str = ""  # sgd or adamw ("": adamw)


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


def local_optimizer(
    plan: LocalPlan, params: list[torch.nn.Parameter], label: str
) -> torch.optim.Optimizer:
    """The plan's optimizer: plain SGD (no momentum, no weight decay: the local steps SCAFFOLD
    and FedNova assume) or AdamW without weight decay."""
    name = plan.local_optimizer or "adamw"
    if name == "sgd":
        return torch.optim.SGD(params, lr=plan.learning_rate, momentum=0.0, weight_decay=0.0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=plan.learning_rate, weight_decay=0.0)
    raise ValueError(f"{label}: unknown local optimizer {name!r}; this silo knows sgd and adamw")


def train_round(
    silo: SiloModel,
    samples: Sequence[Sample],
    plan: LocalPlan,
    global_state: StateDict,
    *,
    server_control: StateDict | None = None,
    controls: ControlVariates | None = None,
    label: str = "train",
    hardware: TrainingHardware | None = None,
    group: SiloGroup | None = None,
) -> LocalResult:
    """Train from `global_state` and return (local - global) in the layout's dtypes. Under a
    group of processes, each computes its share of every batch and all return the same."""
    group = group or SiloGroup()
    samples = [s.rendered(plan.prompt_variant) for s in samples]
    refusal = silo.refusal(samples)
    if refusal is not None:
        raise TrainingFailed(reason="modality", detail=f"{label}: {refusal}")
    load_global_adapter(silo, global_state)
    silo.model.train()
    params = trainable_by_state_name(silo.model)
    proximal = _proximal(silo, samples, plan, params, global_state)
    correction = None
    if server_control is not None and controls is not None:
        correction = {n: c.to(silo.device) for n, c in controls.correction(server_control).items()}
    steps = LocalSteps(
        silo=silo,
        group=group,
        params=params,
        optimizer=local_optimizer(plan, list(params.values()), label),
        proximal=proximal,
        correction=correction,
    )
    losses: list[float] = []
    torch.manual_seed(plan.seed * group.world_size + group.rank)  # LoRA dropout
    for epoch in range(plan.local_epochs):
        batches = round_batches(samples, plan.batch_size, plan.seed, epoch)
        for micro_batches in progress(
            step_batches(silo, batches, hardware=hardware or TrainingHardware(), group=group),
            desc=f"{label} epoch {epoch + 1}",
        ):
            losses.append(steps.run(micro_batches, f"{label}: step {len(losses) + 1}"))
    applied = steps.applied(len(losses), label)
    delta = _delta(silo, global_state)
    control_delta = None
    if server_control is not None and controls is not None:
        control_delta = controls.proposal(
            server_control, delta, steps=max(applied, 1), lr=plan.learning_rate
        )
    return LocalResult(
        delta=delta,
        num_samples=len(samples),
        steps=applied,
        mean_loss=sum(losses) / len(losses) if losses else math.nan,
        gamma=proximal.gamma,
        control_delta=control_delta,
    )


def _proximal(
    silo: SiloModel,
    samples: Sequence[Sample],
    plan: LocalPlan,
    params: dict[str, torch.nn.Parameter],
    global_state: StateDict,
) -> ProximalTerms:
    """FedProx and the adaptive masked term, anchored at the global adapter; its gamma is
    what was applied (0 when no layer is left to regularise)."""
    gamma = modality_gamma(samples, plan.gamma_max) if plan.gamma_max > 0 else 0.0
    mask = masked_layers(decoder_depth(silo.model), plan.mask_skip_layers) if gamma > 0 else set()
    proximal = ProximalTerms(params, global_state, mu=plan.proximal_mu, gamma=gamma, mask=mask)
    if not proximal.masked:
        proximal.gamma = 0.0
    return proximal


def _delta(silo: SiloModel, global_state: StateDict) -> StateDict:
    local = get_peft_model_state_dict(silo.model)
    return {
        name: (local[name].detach().float().cpu() - start.float()).to(start.dtype)
        for name, start in global_state.items()
    }
