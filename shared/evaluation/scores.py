"""Metrics from option scores and answers: ROC AUC, accuracy, macro F1, Med-VQA matching."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score


def option_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over each row's option scores (log-likelihoods restricted to the options)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    probabilities: np.ndarray = weights / weights.sum(axis=1, keepdims=True)
    return probabilities


def binary_auc(positive_scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC of the positive option's probability; NaN when the test set has one class only
    (AUC is undefined there, and a number would mislead). Ties count half, as in sklearn."""
    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, positive_scores))


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if not labels:
        return math.nan
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def macro_f1(predictions: Sequence[int], labels: Sequence[int], *, classes: int) -> float:
    """Macro F1 over all `classes`, a class absent from both counting as F1 0 (as the paper)."""
    if not labels:
        return math.nan
    return float(
        f1_score(labels, predictions, labels=list(range(classes)), average="macro", zero_division=0)
    )


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def closed_match(prediction: str, answer: str) -> bool:
    """Closed questions (yes/no and the like) by normalised exact match."""
    return normalize_answer(prediction) == normalize_answer(answer)


def token_recall(prediction: str, answer: str) -> float:
    """LLaVA-Med's open-question score: the share of the answer's tokens the prediction has."""
    wanted = normalize_answer(answer).split()
    if not wanted:
        return 0.0
    found = set(normalize_answer(prediction).split())
    return sum(token in found for token in wanted) / len(wanted)
