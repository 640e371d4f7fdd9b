"""Med-VQA accuracy: open, closed and overall."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shared.evaluation.judge import LLMJudge
from shared.evaluation.scores import closed_match, token_recall


@dataclass(frozen=True)
class VQAResult:
    """One answered question."""

    question: str
    answer: str
    prediction: str
    answer_type: str  # OPEN or CLOSED


def medvqa_scores(results: Sequence[VQAResult], judge: LLMJudge | None = None) -> dict[str, float]:
    """Closed by normalised exact match; open by the judge when given, else token recall.
    Open answers the judge could not grade are left out of the means and counted."""
    closed = [
        float(closed_match(r.prediction, r.answer)) for r in results if r.answer_type == "CLOSED"
    ]
    open_scores: list[float] = []
    unjudged = 0
    for r in (r for r in results if r.answer_type != "CLOSED"):
        if judge is None:
            open_scores.append(token_recall(r.prediction, r.answer))
            continue
        verdict = judge.verdict(r.question, r.answer, r.prediction)
        if verdict is None:
            unjudged += 1
        else:
            open_scores.append(float(verdict))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return {
        "open": mean(open_scores),
        "closed": mean(closed),
        "overall": mean(open_scores + closed),
        "unjudged": float(unjudged),
    }
