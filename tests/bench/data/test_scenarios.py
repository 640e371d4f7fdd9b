"""Each scenario's invariants on a 2,000-sample synthetic set; the missing scenario's modality
shares against the paper's over many seeds."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from scipy.stats import chi2_contingency, chisquare

from bench.data.datasets.records import RawSample
from bench.data.scenarios import Placed, ScenarioError, ScenarioSpec, missing_shares, partition


def _synthetic(count: int = 2000, classes: int = 8) -> list[RawSample]:
    return [
        RawSample(
            id=str(i),
            image=Path(f"/img/{i}.png"),
            image_rel=f"img/{i}.png",
            text=f"text {i}",
            question=None,
            answer=str(i % classes),
            label=i % classes,
            group=str((i * 7919) % classes),
            source="synthetic",
        )
        for i in range(count)
    ]


def _single(modality: str, count: int) -> list[RawSample]:
    return [
        RawSample(
            id=f"{modality}{i}",
            image=Path("/x.png") if modality == "image" else None,
            image_rel="x.png" if modality == "image" else None,
            text="q" if modality == "text" else None,
            question="q",
            answer="a",
            label=None,
            group="g",
            source=modality,
        )
        for i in range(count)
    ]


SAMPLES = _synthetic()


def _ids(clients: list[list[Placed]]) -> list[str]:
    return [p.sample.id for placed in clients for p in placed]


KINDS = ("image+text", "image_only", "text_only")


def _kind(placed: Placed) -> str:
    return (
        "image+text"
        if placed.image and placed.text
        else "image_only"
        if placed.image
        else "text_only"
    )


@pytest.mark.parametrize("alpha", [5.0, 1.0, 0.5])
def test_aligned_keeps_every_modality_and_places_each_sample_once(alpha: float) -> None:
    clients = partition(
        [SAMPLES], full_modal=True, spec=ScenarioSpec(scenario="aligned", alpha=alpha, seed=1)
    )
    assert len(clients) == 10
    assert sorted(_ids(clients)) == sorted(s.id for s in SAMPLES)
    assert all(p.image and p.text for c in clients for p in c)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_missing_places_each_sample_once_and_never_empty(beta: float) -> None:
    clients = partition(
        [SAMPLES], full_modal=True, spec=ScenarioSpec(scenario="missing", beta=beta, seed=2)
    )
    assert sorted(_ids(clients)) == sorted(s.id for s in SAMPLES)
    kinds = Counter(_kind(p) for c in clients for p in c)
    assert all(p.image or p.text for c in clients for p in c)
    if beta == 0.0:
        assert kinds == {"image+text": len(SAMPLES)}
    if beta == 1.0:  # every sample lost one modality, and which one is a fair coin
        assert kinds["image+text"] == 0 and abs(kinds["image_only"] - len(SAMPLES) / 2) < 150


def test_missing_expected_shares_are_the_papers() -> None:
    assert missing_shares(0.5) == {"image+text": 0.25, "image_only": 0.375, "text_only": 0.375}
    shares = missing_shares(0.3)
    assert shares["image+text"] == pytest.approx(0.49)
    assert shares["image_only"] == pytest.approx(0.3 * 0.7 + 0.09 / 2)


@pytest.mark.parametrize("beta", [0.3, 0.4, 0.5])
def test_missing_shares_match_the_paper_over_many_seeds(beta: float) -> None:
    """Over 40 seeds of 1,000 samples, the pooled shares fit (1-b)^2, b(1-b) + b^2/2 twice
    (chi-square goodness of fit), and they do not depend on the client (a drop is per sample,
    not per client: chi-square test of homogeneity across the 10 clients)."""
    samples = _synthetic(1000)
    pooled: Counter[str] = Counter()
    per_client = [Counter[str]() for _ in range(10)]
    both_per_seed = []
    for seed in range(40):
        clients = partition(
            [samples], full_modal=True, spec=ScenarioSpec(scenario="missing", beta=beta, seed=seed)
        )
        for index, placed in enumerate(clients):
            per_client[index].update(_kind(p) for p in placed)
        counts = Counter(_kind(p) for c in clients for p in c)
        both_per_seed.append(counts["image+text"] / len(samples))
        pooled.update(counts)
    total = sum(pooled.values())
    expected = missing_shares(beta)
    fit = chisquare([pooled[k] for k in KINDS], [expected[k] * total for k in KINDS])
    assert fit.pvalue > 1e-3, (dict(pooled), expected)
    table = [[c[k] for k in KINDS] for c in per_client]
    assert chi2_contingency(table).pvalue > 1e-3, table
    # every seed's both-modal share is near (1-b)^2: no seed loses its full-modal samples
    spread = 5 * (expected["image+text"] * (1 - expected["image+text"]) / len(samples)) ** 0.5
    assert all(abs(share - expected["image+text"]) < spread for share in both_per_seed)


@pytest.mark.parametrize(("image", "text"), [(3, 7), (5, 5), (7, 3)])
def test_cross_has_exactly_the_requested_single_modal_clients(image: int, text: int) -> None:
    clients = partition(
        [SAMPLES],
        full_modal=True,
        spec=ScenarioSpec(scenario="cross", image_clients=image, text_clients=text, seed=3),
    )
    kinds = [{(p.image, p.text) for p in c} for c in clients]
    assert kinds.count({(True, False)}) == image and kinds.count({(False, True)}) == text


def test_cross_over_single_modal_data_sets_splits_each_evenly() -> None:
    images, texts = _single("image", 300), _single("text", 700)
    clients = partition(
        [images, texts],
        full_modal=False,
        spec=ScenarioSpec(scenario="cross", image_clients=3, text_clients=7),
    )
    image_clients = [c for c in clients if c and c[0].image]
    text_clients = [c for c in clients if c and c[0].text]
    assert len(image_clients) == 3 and len(text_clients) == 7
    assert [len(c) for c in image_clients] == [100, 100, 100]
    assert [len(c) for c in text_clients] == [100] * 7


@pytest.mark.parametrize("keep", [0.8, 0.7, 0.6, 0.05])
def test_hybrid_never_leaves_a_client_without_a_modality(keep: float) -> None:
    for seed in range(5):
        clients = partition(
            [SAMPLES],
            full_modal=True,
            spec=ScenarioSpec(scenario="hybrid", keep_prob=keep, seed=seed),
        )
        for placed in clients:
            kinds = {(p.image, p.text) for p in placed}
            assert len(kinds) == 1 and kinds != {(False, False)}


def test_smaller_alpha_gives_more_unequal_clients() -> None:
    def spread(alpha: float) -> float:
        values = []
        for seed in range(5):
            clients = partition(
                [SAMPLES],
                full_modal=True,
                spec=ScenarioSpec(scenario="aligned", alpha=alpha, seed=seed),
            )
            sizes = [len(c) for c in clients]
            values.append(statistics.pstdev(sizes) / statistics.mean(sizes))
        return statistics.mean(values)

    assert spread(0.1) > spread(1.0) > spread(5.0)


@pytest.mark.parametrize(
    "spec",
    [
        ScenarioSpec(scenario="hybrid", keep_prob=0.6, seed=11),
        ScenarioSpec(scenario="missing", beta=0.4, seed=11),
    ],
)
def test_same_seed_same_partition_other_seed_other_partition(spec: ScenarioSpec) -> None:
    first = partition([SAMPLES], full_modal=True, spec=spec)
    assert first == partition([SAMPLES], full_modal=True, spec=spec)
    other = replace(spec, seed=12)
    assert first != partition([SAMPLES], full_modal=True, spec=other)


def test_unreachable_parameters_are_refused() -> None:
    with pytest.raises(ScenarioError, match=r"--beta 1\.2 is not a probability"):
        partition([SAMPLES], full_modal=True, spec=ScenarioSpec(scenario="missing", beta=1.2))
    with pytest.raises(ScenarioError, match=r"--keep-prob -0\.1 is not a probability"):
        partition([SAMPLES], full_modal=True, spec=ScenarioSpec(scenario="hybrid", keep_prob=-0.1))
    with pytest.raises(ScenarioError, match="full-modal"):
        partition([_single("image", 50)], full_modal=False, spec=ScenarioSpec(scenario="missing"))
    with pytest.raises(ScenarioError, match="fewer than 150 samples"):
        partition(
            [SAMPLES],
            full_modal=True,
            spec=ScenarioSpec(scenario="aligned", alpha=0.05, min_samples=150),
        )
