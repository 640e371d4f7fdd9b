"""The grid's Markdown tables on hand-made results: every metric, primary first, mean ± std;
Med-VQA sources apart, SLAKE's languages named."""

from __future__ import annotations

from typing import Any

from bench.report import per_seed_tables, tables


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


def test_medical_tables_keep_vqa_rad_and_slake_apart() -> None:
    metrics = {
        "slake/open": 0.2,
        "slake/closed": 0.6,
        "slake/overall": 0.4,
        "slake/unjudged": 0.0,
        "vqa_rad/closed": 0.7,
        "vqa_rad/overall": 0.5,
    }
    rows = [
        {
            "dataset": "medical",
            "slake_languages": "all",
            "scenario": "cross",
            "method": "FedYogi",
            "seed": 0,
            "metrics": metrics,
            "rounds": [],
        }
    ]
    report = tables(rows)
    headings = [line for line in report.splitlines() if line.startswith("### ")]
    assert [h.split(" (")[0] for h in headings] == [
        "### medical: vqa_rad/overall",
        "### medical: vqa_rad/closed",
        "### medical: slake/overall",
        "### medical: slake/closed",
        "### medical: slake/open",
    ]
    assert headings[2].endswith("; SLAKE: every language)")
    assert "SLAKE" not in headings[0]
    assert "| FedYogi | 40.00 |" in report.split("### medical: slake/overall")[1]


def test_per_seed_tables_show_each_seed_of_the_primary_metric_in_seed_order() -> None:
    results = [
        _row("FedAvg", 2, "hybrid", auc=0.90, accuracy=0.75),
        _row("FedAvg", 0, "hybrid", auc=0.80, accuracy=0.70),
        _row("Local", 0, "cross", auc=0.55, accuracy=0.5),
    ]
    report = per_seed_tables(results)
    assert report.startswith("### hateful_memes: hateful_memes/auc per seed")
    assert "accuracy" not in report
    assert "| FedAvg | 80.0 / 90.0 | n/a |" in report
    assert "| Local | n/a | 55.0 |" in report
