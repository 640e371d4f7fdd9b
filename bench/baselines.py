"""The two baselines that need no federation: Zero-shot and Local (each silo alone)."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

from shared.adapter import initial_adapter, load_model_config
from shared.silo_data import read_split
from shared.tensor_codec import StateDict
from silo_agent.evaluator import evaluate
from silo_agent.model import load_silo_model
from silo_agent.trainer import LocalPlan, load_global_adapter, train_round


def fresh_adapter(model: Path, *, seed: int, trust_remote_code: bool = False) -> StateDict:
    config = load_model_config(model, trust_remote_code=trust_remote_code)
    return initial_adapter(config, seed=seed, trust_remote_code=trust_remote_code)[1]


def zero_shot(
    model: Path, test_dir: Path, *, seed: int, trust_remote_code: bool = False
) -> dict[str, float]:
    """The base model untouched (a fresh LoRA adapter adds exactly zero: B starts at 0)."""
    silo = load_silo_model(model, device="cpu", trust_remote_code=trust_remote_code)
    load_global_adapter(silo, fresh_adapter(model, seed=seed, trust_remote_code=trust_remote_code))
    return evaluate(silo, read_split(test_dir, "test"), variant=None)


def local(
    model: Path,
    client_dirs: list[Path],
    test_dir: Path,
    *,
    seed: int,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Each silo trains alone for `epochs` epochs; the mean of the silos' test scores."""
    test = read_split(test_dir, "test")
    scores: list[dict[str, float]] = []
    for index, directory in enumerate(client_dirs):
        silo = load_silo_model(model, device="cpu", trust_remote_code=trust_remote_code)
        state = fresh_adapter(model, seed=seed, trust_remote_code=trust_remote_code)
        samples = read_split(directory)
        for epoch in range(epochs):
            plan = LocalPlan(
                learning_rate=learning_rate,
                local_epochs=1,
                batch_size=batch_size,
                seed=seed * 1_000 + index * 10 + epoch,
            )
            result = train_round(silo, samples, plan, state, label=f"local {directory.name}")
            state = {k: state[k] + result.delta[k] for k in state}
        load_global_adapter(silo, state)
        scores.append(evaluate(silo, test, variant=None))
    names = sorted({k for s in scores for k in s})
    return {
        k: mean(s[k] for s in scores if k in s)
        for k in names
        if any(not math.isnan(s.get(k, math.nan)) for s in scores)
    }
