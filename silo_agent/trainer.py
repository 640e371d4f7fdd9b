"""One round of local training: load the global adapter, one epoch of LoRA, return the delta."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm import tqdm

from shared.silo_data import Sample
from shared.tensor_codec import StateDict
from silo_agent.batching import training_batch
from silo_agent.model import SiloModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalPlan:
    """The round task's training settings."""

    learning_rate: float
    local_epochs: int
    batch_size: int
    seed: int


@dataclass
class LocalResult:
    """What a silo sends back: the adapter delta, how many samples and steps, the mean loss."""

    delta: StateDict
    num_samples: int
    steps: int
    mean_loss: float


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


def train_round(
    silo: SiloModel,
    samples: Sequence[Sample],
    plan: LocalPlan,
    global_state: StateDict,
    *,
    label: str = "train",
) -> LocalResult:
    """Train from `global_state` and return (local - global) in the layout's dtypes."""
    load_global_adapter(silo, global_state)
    model = silo.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.learning_rate, weight_decay=0.0)
    losses: list[float] = []
    torch.manual_seed(plan.seed)  # LoRA dropout
    for epoch in range(plan.local_epochs):
        batches = _batches(samples, plan, epoch)
        for batch_samples in tqdm(
            batches, desc=f"{label} epoch {epoch + 1}", leave=False, mininterval=2.0
        ):
            batch = {
                k: v.to(silo.device)
                for k, v in training_batch(silo.processor, batch_samples).items()
            }
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{label}: non-finite loss at step {len(losses) + 1}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    local = get_peft_model_state_dict(model)
    delta = {
        name: (local[name].detach().float().cpu() - start.float()).to(start.dtype)
        for name, start in global_state.items()
    }
    mean_loss = sum(losses) / len(losses) if losses else math.nan
    return LocalResult(
        delta=delta, num_samples=len(samples), steps=len(losses), mean_loss=mean_loss
    )
