"""Each scenario's invariants on a 2,000-sample synthetic set."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from shared.datasets.records import RawSample
from shared.scenarios import Placed, ScenarioError, ScenarioSpec, partition


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
        )
        for i in range(count)
    ]


SAMPLES = _synthetic()


def _ids(clients: list[list[Placed]]) -> list[str]:
    return [p.sample.id for placed in clients for p in placed]


def _missing_rate(clients: list[list[Placed]]) -> float:
    placed = [p for c in clients for p in c]
    return sum((not p.image) + (not p.text) for p in placed) / (2 * len(placed))


@pytest.mark.parametrize("alpha", [5.0, 1.0, 0.5])
def test_aligned_keeps_every_modality_and_places_each_sample_once(alpha: float) -> None:
    clients = partition(
        [SAMPLES], full_modal=True, spec=ScenarioSpec(scenario="aligned", alpha=alpha, seed=1)
    )
    assert len(clients) == 10
    assert sorted(_ids(clients)) == sorted(s.id for s in SAMPLES)
    assert all(p.image and p.text for c in clients for p in c)


@pytest.mark.parametrize("beta", [0.3, 0.4, 0.5])
def test_missing_rate_is_beta_and_no_sample_is_empty(beta: float) -> None:
    clients = partition(
        [SAMPLES], full_modal=True, spec=ScenarioSpec(scenario="missing", beta=beta, seed=2)
    )
    assert abs(_missing_rate(clients) - beta) <= 0.02
    assert all(p.image or p.text for c in clients for p in c)
    assert sorted(_ids(clients)) == sorted(s.id for s in SAMPLES)


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


def test_same_seed_same_partition_other_seed_other_partition() -> None:
    spec = ScenarioSpec(scenario="hybrid", keep_prob=0.6, seed=11)
    first = partition([SAMPLES], full_modal=True, spec=spec)
    assert first == partition([SAMPLES], full_modal=True, spec=spec)
    other = ScenarioSpec(scenario="hybrid", keep_prob=0.6, seed=12)
    assert first != partition([SAMPLES], full_modal=True, spec=other)


def test_unreachable_parameters_are_refused() -> None:
    with pytest.raises(ScenarioError, match=r"beta 0\.7 is not reachable"):
        partition([SAMPLES], full_modal=True, spec=ScenarioSpec(scenario="missing", beta=0.7))
    with pytest.raises(ScenarioError, match="full-modal"):
        partition([_single("image", 50)], full_modal=False, spec=ScenarioSpec(scenario="missing"))
    with pytest.raises(ScenarioError, match="fewer than 150 samples"):
        partition(
            [SAMPLES],
            full_modal=True,
            spec=ScenarioSpec(scenario="aligned", alpha=0.05, min_samples=150),
        )
