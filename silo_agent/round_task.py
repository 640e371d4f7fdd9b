"""What a round task hands the silo: its local training plan, and the global adapter apart from
SCAFFOLD's server control variate."""

from __future__ import annotations

from shared.prompts import PromptVariant
from shared.tensor_codec import CONTROL_PREFIX, StateDict
from shared.wire.v1 import federation_pb2 as pb
from silo_agent.trainer import LocalPlan


def plan_of(training: pb.TrainingPlan) -> LocalPlan:
    return LocalPlan(
        learning_rate=training.learning_rate,
        local_epochs=training.local_epochs,
        batch_size=training.batch_size,
        seed=training.seed,
        proximal_mu=training.proximal_mu,
        gamma_max=training.gamma_max,
        mask_skip_layers=training.mask_skip_layers,
        prompt_variant=PromptVariant(training.prompt_variant) if training.prompt_variant else None,
        control_variates=training.control_variates,
        local_optimizer=training.local_optimizer,
    )


def split_controls(state: StateDict) -> tuple[StateDict, StateDict]:
    """The adapter, and SCAFFOLD's server control variate if the payload carries one."""
    adapter = {n: t for n, t in state.items() if not n.startswith(CONTROL_PREFIX)}
    controls = {
        n.removeprefix(CONTROL_PREFIX): t for n, t in state.items() if n.startswith(CONTROL_PREFIX)
    }
    return adapter, controls
