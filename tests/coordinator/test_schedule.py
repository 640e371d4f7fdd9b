"""The client learning-rate schedule across rounds."""

from __future__ import annotations

from itertools import pairwise

import pytest

from coordinator.schedule import client_learning_rate


@pytest.mark.parametrize("rounds", [1, 5, 25, 150])
def test_cosine_never_exceeds_base_and_decays(rounds: int) -> None:
    rates = [
        client_learning_rate(base=2e-5, round_index=r, rounds=rounds) for r in range(1, rounds + 1)
    ]
    assert max(rates) <= 2e-5
    assert rates[0] <= 2e-5  # no doubled first round
    after_warmup = rates[-(rounds - max(1, -(-rounds // 100))) :] if rounds > 1 else rates
    assert all(a >= b for a, b in pairwise(after_warmup))
    assert rates[-1] > 0


def test_warmup_is_one_percent_of_rounds_rounded_up() -> None:
    rates = [client_learning_rate(base=1.0, round_index=r, rounds=300) for r in (1, 2, 3, 4)]
    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert rates[3] == pytest.approx(1.0)


def test_constant_schedule() -> None:
    assert client_learning_rate(base=0.1, round_index=7, rounds=9, schedule="constant") == 0.1
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        client_learning_rate(base=0.1, round_index=1, rounds=9, schedule="linear")
