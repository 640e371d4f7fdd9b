"""The wire-dtype table pairs each bfloat16 and int8 cell with its float32 twin and pools the
pairs of each wire."""

from __future__ import annotations

from typing import Any

import pytest

from bench.wire_effect import table


def _row(method: str, seed: int, auc: float, sent: int, received: int) -> dict[str, Any]:
    rounds = [{"bytes_sent": sent, "bytes_received": received}] * 2
    return {
        "scenario": "aligned",
        "method": method,
        "seed": seed,
        "metrics": {"hateful_memes/auc": auc},
        "rounds": rounds,
    }


def test_cells_are_twins_and_each_pooled_difference_is_the_mean_of_its_pairs() -> None:
    rows = [
        _row("FedAvg fp32", 0, 0.80, 500, 500),
        _row("FedAvg bf16", 0, 0.82, 260, 260),
        _row("FedAvg int8", 0, 0.81, 260, 130),
        _row("FedAvg fp32", 1, 0.70, 500, 500),
        _row("FedAvg bf16", 1, 0.69, 260, 260),
        _row("FedAvg int8", 1, 0.66, 260, 130),
        _row("FedAdam fp32", 0, 0.75, 500, 500),  # no int8 twin: left out
        _row("FedAdam bf16", 0, 0.75, 260, 260),
    ]
    text = table(rows)
    lines = [line for line in text.splitlines() if line.startswith("| aligned")]
    assert len(lines) == 2
    assert (
        "| 80.0 | 82.0 | 81.0 | +2.0 | +1.0 | 1,000 | **0.520** | **0.390** | **0.260** |"
        in lines[0]
    )
    assert "| 70.0 | 69.0 | 66.0 | -1.0 | -4.0 |" in lines[1]
    assert "Pooled over the 2 pairs: bf16 - fp32 = +0.50 AUC points" in text
    assert "Pooled over the 2 pairs: int8 - fp32 = -1.50 AUC points" in text


def test_a_grid_without_every_wire_is_refused() -> None:
    with pytest.raises(ValueError, match="float32, bfloat16 and int8"):
        table([_row("FedAvg fp32", 0, 0.8, 500, 500), _row("FedAvg bf16", 0, 0.8, 260, 260)])
