"""The paired sign-flip test and the claims table on hand-made numbers."""

from __future__ import annotations

from typing import Any

import pytest

from bench.significance import comparisons, paired_test, significance_table


def test_three_seeds_that_all_agree_reach_only_the_smallest_p_of_three_pairs() -> None:
    test = paired_test([0.80, 0.85, 0.90], [0.70, 0.70, 0.70])
    assert test.differences == pytest.approx((0.10, 0.15, 0.20))
    assert test.mean == pytest.approx(0.15)
    # of the 8 sign patterns only (+,+,+) and (-,-,-) reach |mean| 0.15
    assert test.p_value == pytest.approx(2 / 8)
    assert test.exact


def test_mixed_signs_count_every_pattern_at_least_as_extreme() -> None:
    # differences 3, -1, 1, 1 (sum 4): with the 3 kept positive, the other three signed
    # values sum to 3 (1 pattern) or 1 (3 patterns) for a sum >= 4; mirrored: 8 of 16
    test = paired_test([3.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    assert test.mean == pytest.approx(1.0)
    assert test.p_value == pytest.approx(8 / 16)


def test_no_difference_gives_p_one_and_twenty_pairs_are_still_exact() -> None:
    assert paired_test([0.5, 0.6], [0.5, 0.6]).p_value == 1.0
    twenty = paired_test([1.0] * 20, [0.0] * 20)
    assert twenty.exact and twenty.p_value == pytest.approx(2 / 2**20)
    # one pair against the other 19: |sum| >= 18 needs at most one of the 20 signs flipped
    mixed = paired_test([1.0] * 19 + [0.0], [0.0] * 19 + [1.0])
    assert mixed.p_value == pytest.approx(2 * 21 / 2**20)


def test_beyond_the_exact_limit_the_p_value_is_sampled_and_never_zero() -> None:
    many = paired_test([1.0] * 30, [0.0] * 30)
    assert not many.exact
    assert many.p_value == pytest.approx(1 / 200_001)


def test_unpaired_input_is_refused() -> None:
    with pytest.raises(ValueError, match="equally many"):
        paired_test([1.0, 2.0], [1.0])


def test_comparisons_put_methods_against_the_baselines_and_fedavg_variants_against_their_base() -> (
    None
):
    assert comparisons(["Zero-shot", "Local", "FedAvg"]) == [
        ("FedAvg", "Local"),
        ("Local", "Zero-shot"),
        ("FedAvg", "Zero-shot"),
    ]
    assert comparisons(["FedAvg", "FedAvg+prompt"]) == [("FedAvg+prompt", "FedAvg")]
    assert ("FedProx", "FedAvg") in comparisons(["Local", "FedAvg", "FedProx"])
    assert comparisons(["FedAvg", "FedAvg+reg", "FedAvg+reg(0.1)"]) == [
        ("FedAvg+reg", "FedAvg"),
        ("FedAvg+reg(0.1)", "FedAvg"),
        ("FedAvg+reg(0.1)", "FedAvg+reg"),
    ]


def _row(method: str, scenario: str, seed: int, auc: float) -> dict[str, Any]:
    return {
        "dataset": "hateful_memes",
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "metrics": {"hateful_memes/auc": auc, "hateful_memes/accuracy": 0.5},
    }


def test_the_table_pairs_by_seed_within_a_scenario_and_pools_over_scenarios() -> None:
    rows = [
        _row("Local", "cross", 0, 0.60),
        _row("Local", "cross", 1, 0.70),
        _row("FedAvg", "cross", 0, 0.65),
        _row("FedAvg", "cross", 1, 0.68),
        _row("Local", "hybrid", 0, 0.50),
        _row("FedAvg", "hybrid", 0, 0.60),
        _row("FedAvg", "hybrid", 1, 0.90),  # no Local cell to pair with: left out
    ]
    table = significance_table(rows)
    assert "hateful_memes/auc" in table and "accuracy" not in table
    # +5, -2: every one of the 4 sign patterns has |sum| >= 3
    assert "| FedAvg > Local | cross | +5.0, -2.0 | +1.50 | 1 | 2 |" in table
    assert "| FedAvg > Local | hybrid | +10.0 | +10.00 | 1 | 1 |" in table
    # pooled: +5, -2, +10 (cross 0, cross 1, hybrid 0); |sum| >= 13 for 17, 13 and mirrored
    assert "| FedAvg > Local | all cells pooled | +5.0, -2.0, +10.0 | +4.33 | 0.5 | 3 |" in table
