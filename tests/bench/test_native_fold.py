"""The native-loop A/B benchmark runs its three rounds per case and leaves the loops on."""

from __future__ import annotations

import pytest

from bench import native_fold
from coordinator.aggregation import native


def test_each_case_is_timed_three_ways_and_tabulated() -> None:
    if native.library() is None:
        pytest.skip("the native fold loops are not built on this machine")
    times = native_fold.run(params=300_000, repeats=2)
    assert set(times) == set(native_fold.CASES)
    assert all(len(rows) == 2 and all(t > 0 for r in rows for t in r) for rows in times.values())
    assert native.library() is not None  # turned back on for whatever runs next
    text = native_fold.table(times)
    for case in native_fold.CASES:
        assert f"| {case.strategy} | {case.updates} | {case.order} |" in text
