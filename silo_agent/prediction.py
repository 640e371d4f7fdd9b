"""Predictions of an exported adapter on a silo's samples (what `fedmllm-predict` writes)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from safetensors.torch import load_file

from shared.adapter import RemoteCodeRequired
from shared.cli import config_error
from shared.evaluation.scores import option_probabilities
from shared.processors import ProcessorLoadError
from shared.prompts import TASKS
from shared.silo_data import Sample
from silo_agent.evaluator import generate_answers, option_scores
from silo_agent.model import SiloModel, load_silo_model
from silo_agent.trainer import load_global_adapter


def predict(silo: SiloModel, samples: list[Sample], *, batch_size: int) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    silo.model.eval()
    with torch.inference_mode():
        for task_name in sorted({s.task for s in samples if s.task is not None}):
            chosen = [s for s in samples if s.task == task_name]
            probabilities = option_probabilities(option_scores(silo, chosen, batch_size=batch_size))
            options = TASKS[task_name].options
            for sample, row in zip(chosen, probabilities, strict=True):
                best = int(row.argmax())
                rows[sample.id] = {
                    "id": sample.id,
                    "task": task_name,
                    "prediction": TASKS[task_name].target(best),
                    "probabilities": dict(zip(options, map(float, row), strict=True)),
                }
        others = [s for s in samples if s.task is None]
        if others:
            for sample, answer in zip(
                others, generate_answers(silo, others, batch_size=batch_size), strict=True
            ):
                rows[sample.id] = {"id": sample.id, "prediction": answer}
    return [rows[s.id] for s in samples]


def model_for(args: argparse.Namespace) -> SiloModel:
    config = json.loads((args.adapter / "adapter_config.json").read_text())
    try:
        return load_silo_model(
            args.model,
            device=args.device,
            lora_r=config["r"],
            lora_alpha=config["lora_alpha"],
            trust_remote_code=args.trust_remote_code,
        )
    except (RemoteCodeRequired, ProcessorLoadError, OSError, ValueError) as exc:
        raise config_error(f"model {args.model}: {exc}") from None


def predictions(args: argparse.Namespace, samples: list[Sample]) -> list[dict[str, Any]]:
    """The exported adapter of `args.adapter` on the base model, over `samples`."""
    silo = model_for(args)
    load_global_adapter(silo, load_file(str(args.adapter / "adapter_model.safetensors")))
    return predict(silo, samples, batch_size=args.batch_size)
