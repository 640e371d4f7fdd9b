"""The wire-dtype table pairs each bfloat16 cell with its float32 twin and pools the pairs."""

from __future__ import annotations

from typing import Any

import pytest

from bench.wire_effect import table


def _row(method: str, seed: int, auc: float, wire_bytes: int) -> dict[str, Any]:
    rounds = [{"bytes_sent": wire_bytes // 2, "bytes_received": wire_bytes // 2}] * 2
    return {
        "scenario": "aligned",
        "method": method,
        "seed": seed,
        "metrics": {"hateful_memes/auc": auc},
        "rounds": rounds,
    }


def test_pairs_are_cell_twins_and_the_pooled_difference_is_their_mean() -> None:
    rows = [
        _row("FedAvg fp32", 0, 0.80, 1000),
        _row("FedAvg bf16", 0, 0.82, 520),
        _row("FedAvg fp32", 1, 0.70, 1000),
        _row("FedAvg bf16", 1, 0.69, 520),
        _row("FedAdam fp32", 0, 0.75, 1000),  # no bf16 twin: left out
    ]
    text = table(rows)
    lines = [line for line in text.splitlines() if line.startswith("| aligned")]
    assert len(lines) == 2
    assert "| 80.0 | 82.0 | +2.0 | 1,000 | 520 | **0.520** |" in lines[0]
    assert "| 70.0 | 69.0 | -1.0 |" in lines[1]
    assert "Pooled over the 2 pairs: bf16 - fp32 = +0.50 AUC points" in text


def test_a_grid_without_both_wires_is_refused() -> None:
    with pytest.raises(ValueError, match="both float32 and bfloat16"):
        table([_row("FedAvg fp32", 0, 0.8, 1000)])
