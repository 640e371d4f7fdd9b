"""The grid's Markdown tables on hand-made results: every metric, primary first, mean ± std."""

from __future__ import annotations

from typing import Any

from bench.report import tables


def _row(method: str, seed: int, scenario: str, **metrics: float) -> dict[str, Any]:
    return {
        "dataset": "hateful_memes",
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "metrics": {f"hateful_memes/{k}": v for k, v in metrics.items()},
        "rounds": [],
    }


def test_a_table_per_metric_primary_first_with_mean_and_std_over_seeds() -> None:
    results = [
        _row("FedAvg", 0, "hybrid", auc=0.80, accuracy=0.70),
        _row("FedAvg", 1, "hybrid", auc=0.90, accuracy=0.75),
        _row("Local", 0, "hybrid", auc=0.60),  # a cell that lost its accuracy
        _row("Local", 0, "cross", auc=0.55, accuracy=0.5),
    ]
    report = tables(results)
    auc = report.index("### hateful_memes: hateful_memes/auc")
    accuracy = report.index("### hateful_memes: hateful_memes/accuracy")
    assert auc < accuracy  # the paper's metric leads, though "accuracy" sorts first
    assert "| method | hybrid | cross |" in report
    assert "| FedAvg | 85.00 ± 7.07 | n/a |" in report[auc:accuracy]
    assert "| Local | 60.00 | 55.00 |" in report[auc:accuracy]
    assert "| FedAvg | 72.50 ± 3.54 | n/a |" in report[accuracy:]
    assert "| Local | n/a | 50.00 |" in report[accuracy:]
    assert "Communication per round" not in report  # no FL rounds in these rows
