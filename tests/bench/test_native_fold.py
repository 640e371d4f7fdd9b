"""The native-loop A/B benchmark runs its three rounds and the received floor per case and leaves
the loops on."""

from __future__ import annotations

import pytest

from bench import native_fold
from bench.server_round import phases
from coordinator.aggregation import native


def test_each_case_is_timed_four_ways_and_tabulated() -> None:
    if native.library() is None:
        pytest.skip("the native fold loops are not built on this machine")
    times = native_fold.run(params=300_000, repeats=2)
    assert set(times) == set(native_fold.CASES)
    assert all(
        len(rows) == 2 and all(len(r) == 4 and min(r) > 0 for r in rows) for rows in times.values()
    )
    assert native.library() is not None  # turned back on for whatever runs next
    text = native_fold.table(times)
    for case in native_fold.CASES:
        assert f"| {case.strategy} | {case.updates} | {case.order} |" in text


def test_repetitions_are_counted_at_the_speed_their_floor_shows_and_stalls_left_out() -> None:
    """This machine's memory runs at two speeds (floors 16-19 against 28-34 ms per add_); a
    repetition whose floor stalled belongs to neither, and must not turn the slower speed
    into the "faster" one."""
    two = [0.050, 0.086, 0.052, 0.088, 0.049, 0.090, 0.051, 0.155]
    levels, stray = phases(two)
    assert levels == {"faster": [4, 0, 6, 2], "slower": [1, 3, 5]} and stray == 1
    levels, stray = phases([0.083, 0.085, 0.155, 0.084, 0.493, 0.082])
    assert levels == {"one only": [5, 0, 3, 1]} and stray == 2
    # a slower phase whose floors spread wider than LEVEL (95 to 140 ms) is one speed, not two
    spread = [0.068, 0.095, 0.070, 0.108, 0.110, 0.071, 0.112, 0.119, 0.125, 0.072, 0.131, 0.140]
    levels, stray = phases(spread)
    assert levels == {"faster": [0, 2, 5, 9], "slower": [1, 3, 4, 6, 7, 8, 10, 11]} and not stray
    levels, stray = phases([0.05, 0.09])  # too few to tell speeds apart
    assert levels == {"mixed": [0, 1]} and stray == 0
    text = native_fold.table({native_fold.CASES[0]: [(f, 1.0, 1.0, 1.0) for f in two]})
    assert "| fold's | faster | 4 | 50 |" in text and "| fold's | slower | 3 | 88 |" in text
    assert "a stalled floor: fedavg 2 fold's: 1." in text
