"""Robust aggregation against independent NumPy re-derivations, and the round's fold through
the real receiver: every rule, clipping and share caps, and sums that arrival order cannot
change."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.aggregation import robust
from coordinator.aggregation import sums as sums_module
from coordinator.aggregation.fold import AggregationRule, Arrival, RoundFold
from coordinator.aggregation.receiver import receive_bytes
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from coordinator.strategies import RoundAggregate
from shared.tensor_codec import encode_state

SHAPES = {"layer.0.lora_A.weight": (4, 6), "layer.0.lora_B.weight": (6, 4), "layer.1.w": (5,)}
LAYOUT = FlatLayout.of({k: torch.zeros(s) for k, s in SHAPES.items()})


def _np_capped(weights: list[float], share: float) -> np.ndarray:
    """Bisection on the cap c = share * sum(min(w, c)), as a numeric check of the closed form."""
    w = np.asarray(weights, dtype=np.float64)
    if share * len(w) <= 1:
        return np.ones_like(w)
    low, high = 0.0, float(w.max())
    for _ in range(200):
        c = (low + high) / 2
        if c > share * np.minimum(w, c).sum():
            high = c
        else:
            low = c
    capped = np.minimum(w, high)
    return capped if w.max() > share * w.sum() else w


@pytest.mark.parametrize(
    ("weights", "share"),
    [([1, 1, 1, 1e6], 0.5), ([5, 40, 13, 900, 2], 0.3), ([3, 3, 3], 0.9), ([7, 1], 0.2)],
)
def test_capped_weights_match_a_numeric_solution(weights: list[float], share: float) -> None:
    got = np.array(robust.capped_weights(weights, share))
    np.testing.assert_allclose(got, _np_capped(weights, share), rtol=1e-9)
    if share * len(weights) > 1:
        assert got.max() / got.sum() <= share + 1e-12


def test_clip_scales_match_numpy() -> None:
    norms = [0.5, 2.0, 8.0, 0.0, 3.0]
    np.testing.assert_allclose(
        robust.clip_scales(norms, bound=2.5, median_factor=0.0),
        np.minimum(1.0, 2.5 / np.maximum(norms, 1e-300)),
    )
    median_bound = 1.5 * np.median(norms)
    np.testing.assert_allclose(
        robust.clip_scales(norms, bound=0.0, median_factor=1.5),
        np.minimum(1.0, median_bound / np.maximum(norms, 1e-300)),
    )


@pytest.mark.parametrize("k", [3, 4, 7])
def test_coordinate_rules_match_numpy(k: int) -> None:
    block = np.random.default_rng(k).standard_normal((k, 50)).astype(np.float32)
    trim = robust.trimmed_count(k, 0.2)
    ordered = np.sort(block.astype(np.float64), axis=0)
    expected_trimmed = ordered[trim : k - trim].mean(axis=0)
    got = robust.trimmed_mean(torch.from_numpy(block), trim).numpy()
    np.testing.assert_allclose(got, expected_trimmed, rtol=1e-6, atol=1e-6)
    got_median = robust.coordinate_median(torch.from_numpy(block)).numpy()
    np.testing.assert_allclose(got_median, np.median(block, axis=0), rtol=1e-6, atol=1e-6)


def test_krum_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    updates = rng.standard_normal((7, 40))
    updates[2] += 25  # far from the others
    f = 2
    distances = ((updates[:, None, :] - updates[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(distances[i], i))[: 7 - f - 2].sum() for i in range(7)]
    gram = robust.gram_block(torch.from_numpy(updates).float())
    got = robust.krum_scores(robust.squared_distances(gram), f)
    np.testing.assert_allclose(got, scores, rtol=1e-4)
    assert robust.krum_select(got, 1) == [int(np.argmin(scores))]
    assert 2 not in robust.krum_select(got, 5)


def _updates(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return [
        {
            k: torch.from_numpy(0.1 * rng.standard_normal(s).astype(np.float32))
            for k, s in SHAPES.items()
        }
        for _ in range(count)
    ]


def _flat(update: dict[str, torch.Tensor]) -> np.ndarray:
    return LAYOUT.pack(update).double().numpy()


def _fold(
    updates: list[dict[str, torch.Tensor]],
    counts: list[int],
    rule: AggregationRule,
    directory: Path,
    *,
    order: list[int] | None = None,
    wire: str = "float32",
) -> tuple[RoundAggregate, object]:
    shape = UpdateShape(layout=LAYOUT, dtype=wire)
    names = [f"silo-{i}" for i in range(len(updates))]
    fold = RoundFold(
        aggregate=RoundAggregate(total=LAYOUT.zeros(), control_total=None, population=5),
        rule=rule,
        selected=names,
        shape=shape,
    )
    for i in order if order is not None else range(len(updates)):
        wire_state = {k: v.to(getattr(torch, wire)) for k, v in updates[i].items()}
        path = directory / f"{names[i]}-{'-'.join(map(str, order or []))}.bin"
        received = receive_bytes(encode_state(wire_state), shape=shape, path=path)
        n = counts[i]
        fold.add(names[i], Arrival(update=received, weight=float(n), num_samples=n, steps=1))
    outcome = fold.finish()
    fold.discard()
    return fold.aggregate, outcome


def test_weighted_mean_with_clipping_and_share_cap_matches_numpy(tmp_path: Path) -> None:
    updates, counts = _updates(5, 0), [10, 200, 30, 5, 60]
    updates[1] = {k: v * 40 for k, v in updates[1].items()}  # a large update from a big silo
    rule = AggregationRule(max_weight_share=0.3, clip_norm=1.0)
    aggregate, outcome = _fold(updates, counts, rule, tmp_path)
    flats = [_flat(u) for u in updates]
    scales = np.minimum(1.0, 1.0 / np.array([np.linalg.norm(f) for f in flats]))
    weights = _np_capped(counts, 0.3)
    expected = (
        sum(w * s * f for w, s, f in zip(weights, scales, flats, strict=True)) / weights.sum()
    )
    got = aggregate.total.double().numpy() / aggregate.weight_sum
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert "silo-1" in outcome.clipped  # type: ignore[attr-defined]


@pytest.mark.parametrize("aggregator", ["trimmed_mean", "median"])
def test_coordinate_rules_in_the_fold_match_numpy(aggregator: str, tmp_path: Path) -> None:
    updates = _updates(5, 1)
    rule = AggregationRule(aggregator=aggregator, trim_fraction=0.2, clip_median_factor=1.0)
    aggregate, _ = _fold(updates, [1, 2, 3, 4, 5], rule, tmp_path)
    flats = np.stack([_flat(u) for u in updates])
    norms = np.linalg.norm(flats, axis=1)
    clipped = flats * np.minimum(1.0, np.median(norms) / norms)[:, None]
    if aggregator == "median":
        expected = np.median(clipped, axis=0)
    else:
        expected = np.sort(clipped, axis=0)[1:4].mean(axis=0)
    assert aggregate.weight_sum == 1.0
    np.testing.assert_allclose(aggregate.total.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_multi_krum_leaves_out_the_outlier_and_averages_the_rest(tmp_path: Path) -> None:
    updates = _updates(7, 2)
    updates[4] = {k: torch.full_like(v, 0.5) for k, v in updates[4].items()}
    counts = [3, 3, 3, 3, 1000, 3, 3]
    rule = AggregationRule(aggregator="multi_krum", byzantine_silos=2)
    aggregate, outcome = _fold(updates, counts, rule, tmp_path)
    assert "silo-4" in outcome.excluded and len(outcome.excluded) == 2  # type: ignore[attr-defined]
    kept = [i for i in range(7) if f"silo-{i}" not in outcome.excluded]  # type: ignore[attr-defined]
    expected = sum(counts[i] * _flat(updates[i]) for i in kept) / sum(counts[i] for i in kept)
    got = aggregate.total.double().numpy() / aggregate.weight_sum
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "rule",
    [
        AggregationRule(),
        AggregationRule(max_weight_share=0.4),
        AggregationRule(aggregator="median"),
    ],
    ids=["mean", "capped mean", "median"],
)
@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
def test_the_sum_is_bitwise_the_same_in_every_arrival_order(
    rule: AggregationRule, wire: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # updates that wait are folded together: in windows that cut the tensors, 3 at a time
    monkeypatch.setattr(sums_module, "MANY_BLOCK", 7)
    monkeypatch.setattr(sums_module, "MANY_UPDATES", 3)
    updates, counts = _updates(5, 5), [7, 1, 300, 42, 9]
    totals = set()
    for order in itertools.permutations(range(5)):
        aggregate, _ = _fold(updates, counts, rule, tmp_path, order=list(order), wire=wire)
        totals.add((aggregate.total.numpy().tobytes(), aggregate.weight_sum))
    assert len(totals) == 1


def test_a_bfloat16_wire_folds_what_was_sent(tmp_path: Path) -> None:
    updates, counts = _updates(3, 6), [1, 2, 3]
    aggregate, _ = _fold(updates, counts, AggregationRule(), tmp_path, wire="bfloat16")
    sent = [LAYOUT.pack({k: v.bfloat16().float() for k, v in u.items()}).double() for u in updates]
    expected = sum(n * s for n, s in zip(counts, sent, strict=True)) / sum(counts)
    got = aggregate.total.double() / aggregate.weight_sum
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
