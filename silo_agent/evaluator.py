"""Evaluating the adapter on a silo's test split: option scoring for multiple-choice tasks,
greedy answers for Med-VQA; batched under torch.inference_mode."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from shared.evaluation.judge import LLMJudge
from shared.evaluation.medvqa import VQAResult, medvqa_scores
from shared.evaluation.scores import accuracy, binary_auc, macro_f1, option_probabilities
from shared.progress import progress
from shared.prompts import TASKS, PromptVariant
from shared.silo_data import Sample
from silo_agent.batching import IGNORE_INDEX
from silo_agent.model import SiloModel


def answer_loglikelihood(silo: SiloModel, samples: Sequence[Sample]) -> torch.Tensor:
    """Sum of log p(answer tokens | prompt) for each sample, from the training batch's causal
    pass: the logits that score an answer token see only the tokens before it."""
    batch = silo.batch(samples)
    labels = batch.pop("labels")
    logits = silo.forward(batch).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1))
    total: torch.Tensor = (picked.squeeze(-1) * mask).sum(dim=1).cpu()
    return total


def option_scores(
    silo: SiloModel, samples: Sequence[Sample], *, batch_size: int, label: str = "evaluate"
) -> np.ndarray:
    """[samples, options]: the model's log-likelihood of each option's answer, e.g. '(B)
    hateful', after the prompt: scores restricted to the options, no free-text parsing."""
    task = TASKS[str(samples[0].task)]
    rows = []
    for start in progress(range(0, len(samples), batch_size), desc=label):
        chunk = samples[start : start + batch_size]
        rows.append(
            torch.stack(
                [
                    answer_loglikelihood(silo, [replace(s, answer=task.target(o)) for s in chunk])
                    for o in range(len(task.options))
                ],
                dim=1,
            )
        )
    return torch.cat(rows).numpy()


def generate_answers(
    silo: SiloModel, samples: Sequence[Sample], *, batch_size: int, max_new_tokens: int = 16
) -> list[str]:
    answers: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        answers += silo.interface.generate(silo.model, chunk, max_new_tokens=max_new_tokens)
    return answers


def _choice_metrics(name: str, scores: np.ndarray, labels: list[int]) -> dict[str, float]:
    predictions = option_probabilities(scores).argmax(axis=1).tolist()
    metrics = {f"{name}/accuracy": accuracy(predictions, labels)}
    if scores.shape[1] == 2:
        metrics[f"{name}/auc"] = binary_auc(option_probabilities(scores)[:, 1].tolist(), labels)
    else:
        metrics[f"{name}/macro_f1"] = macro_f1(predictions, labels, classes=scores.shape[1])
    return metrics


def evaluate(
    silo: SiloModel,
    samples: Sequence[Sample],
    *,
    variant: PromptVariant | None,
    batch_size: int = 8,
    judge: LLMJudge | None = None,
) -> dict[str, float]:
    """Metrics of the loaded adapter on `samples`, named '<task>/<metric>' and, for Med-VQA,
    '<source>/<metric>' per data set (VQA-RAD and SLAKE apart; 'vqa' without a source)."""
    rendered = [s.rendered(variant) for s in samples]
    metrics: dict[str, float] = {}
    was_training = silo.model.training
    silo.model.eval()
    with torch.inference_mode():
        for task in sorted({s.task for s in rendered if s.task is not None}):
            chosen = [s for s in rendered if s.task == task]
            scores = option_scores(silo, chosen, batch_size=batch_size, label=f"evaluate {task}")
            metrics |= _choice_metrics(task, scores, [int(s.label or 0) for s in chosen])
        questions = [s for s in rendered if s.task is None and s.answer_type is not None]
        for source in sorted({s.source or "vqa" for s in questions}):
            chosen = [s for s in questions if (s.source or "vqa") == source]
            predictions = generate_answers(silo, chosen, batch_size=batch_size)
            results = [
                VQAResult(s.prompt, s.answer, p, str(s.answer_type))
                for s, p in zip(chosen, predictions, strict=True)
            ]
            metrics |= {f"{source}/{k}": v for k, v in medvqa_scores(results, judge).items()}
    silo.model.train(was_training)
    return {k: v for k, v in metrics.items() if not math.isnan(v)}
