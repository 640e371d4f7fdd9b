"""Evaluation on the tiny models: option scores, metrics per task, Med-VQA answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from shared.prompts import HATEFUL_MEMES, PromptVariant
from shared.silo_data import Sample, read_split
from silo_agent.evaluator import evaluate, option_scores
from silo_agent.model import load_silo_model


def test_option_scores_are_the_options_loglikelihoods(
    tiny_model: Path, silo_data: dict[str, Path]
) -> None:
    silo = load_silo_model(tiny_model, device="cpu")
    samples = read_split(silo_data["silo-1"], "test")
    with torch.inference_mode():
        scores = option_scores(silo, samples, batch_size=3)
    assert scores.shape == (len(samples), 2) and np.all(scores < 0)
    # batching does not change a sample's scores
    with torch.inference_mode():
        alone = option_scores(silo, samples[:1], batch_size=1)
    np.testing.assert_allclose(alone[0], scores[0], rtol=1e-4)


def test_vqa_samples_are_answered_and_scored(tiny_llava: Path, tmp_path: Path) -> None:
    silo = load_silo_model(tiny_llava, device="cpu")
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "x.png")
    questions = [
        Sample(
            id="1",
            image=tmp_path / "x.png",
            prompt="<image>\nIs it red?",
            answer="yes",
            has_text=False,
            answer_type="CLOSED",
        ),
        Sample(
            id="2",
            image=tmp_path / "x.png",
            prompt="<image>\nWhich organ?",
            answer="lung",
            has_text=False,
            answer_type="OPEN",
        ),
        Sample(
            id="3",
            image=None,
            prompt="Which organ does it affect?",
            answer="liver",
            answer_type="OPEN",
        ),
    ]
    metrics = evaluate(silo, questions, variant=None, batch_size=2)
    assert {"vqa/open", "vqa/closed", "vqa/overall", "vqa/unjudged"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("vqa/open", "vqa/closed", "vqa/overall"))


def test_one_class_test_set_reports_accuracy_but_no_auc(
    tiny_model: Path, silo_data: dict[str, Path]
) -> None:
    silo = load_silo_model(tiny_model, device="cpu")
    samples = [
        replace(s, label=1, answer=HATEFUL_MEMES.target(1))
        for s in read_split(silo_data["silo-1"], "test")
    ]
    metrics = evaluate(silo, samples, variant=PromptVariant.IMPROVED)
    assert "hateful_memes/accuracy" in metrics and "hateful_memes/auc" not in metrics
