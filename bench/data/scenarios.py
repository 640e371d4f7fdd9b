"""The four multimodal scenarios: which client gets which samples, with which modalities.

- aligned: Dirichlet(alpha) split grouped by label (or question / data type); all modalities kept.
- missing: the aligned split, then each modality of each sample dropped independently with
  probability beta; a sample that would lose both keeps one, chosen at random.
- cross: image-only and text-only clients in the ratio I:T. A full-modal data set is split by
  Dirichlet and the roles assigned at random; an image-modal and a text-modal data set are each
  split evenly over the clients of their modality.
- hybrid: each client keeps each modality with probability p; a client that would keep neither
  keeps one at random. Full-modal data is split by Dirichlet; single-modal data sets go evenly
  to the clients that keep their modality.
Everything is drawn from one seeded generator, so the same seed gives the same partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.data.datasets.records import RawSample
from shared.errors import FedMLLMError

SCENARIOS = ("aligned", "missing", "cross", "hybrid")
MAX_DIRICHLET_DRAWS = 100


class ScenarioError(FedMLLMError):
    """A scenario that cannot be built from these data sets and parameters."""


@dataclass(frozen=True)
class Placed:
    """A sample on a client, with the modalities it keeps there."""

    sample: RawSample
    image: bool
    text: bool


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario and its parameters (PAPER.md: the four multimodal scenarios)."""

    scenario: str
    clients: int = 10
    alpha: float = 0.5  # Dirichlet concentration; smaller gives more unequal clients
    beta: float = 0.3  # missing: probability each modality of each sample is dropped
    image_clients: int = 5  # cross: I of I:T
    text_clients: int = 5  # cross: T of I:T
    keep_prob: float = 0.8  # hybrid: probability a client keeps each modality
    seed: int = 0
    min_samples: int = 1  # fewest samples a Dirichlet split may give a client


def dirichlet_split(
    groups: Sequence[str], *, clients: int, alpha: float, rng: np.random.Generator, min_samples: int
) -> list[list[int]]:
    """Indices per client: each group's samples spread by its own Dirichlet(alpha) draw."""
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    for _ in range(MAX_DIRICHLET_DRAWS):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for group in sorted(by_group):
            indices = np.array(by_group[group])
            rng.shuffle(indices)
            shares = rng.dirichlet([alpha] * clients)
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for client, part in enumerate(np.split(indices, cuts)):
                shards[client].extend(int(i) for i in part)
        if min(len(s) for s in shards) >= min_samples:
            return [sorted(s) for s in shards]
    raise ScenarioError(
        f"{MAX_DIRICHLET_DRAWS} Dirichlet draws with alpha {alpha} each left a client with "
        f"fewer than {min_samples} samples; raise --alpha or lower --min-samples"
    )


def even_split(count: int, clients: int, rng: np.random.Generator) -> list[list[int]]:
    order = rng.permutation(count)
    return [sorted(int(i) for i in part) for part in np.array_split(order, clients)]


def missing_shares(beta: float) -> dict[str, float]:
    """Expected modality shares of the missing scenario: each modality dropped with beta, and
    the both-dropped mass beta^2 split evenly between the two single modalities."""
    single = beta * (1 - beta) + beta**2 / 2
    return {"image+text": (1 - beta) ** 2, "image_only": single, "text_only": single}


def _full(samples: Sequence[RawSample], shard: list[int]) -> list[Placed]:
    return [Placed(samples[i], samples[i].has_image, samples[i].has_text) for i in shard]


def _aligned(
    samples: Sequence[RawSample], spec: ScenarioSpec, rng: np.random.Generator
) -> list[list[int]]:
    return dirichlet_split(
        [s.group for s in samples],
        clients=spec.clients,
        alpha=spec.alpha,
        rng=rng,
        min_samples=spec.min_samples,
    )


def _missing(
    samples: Sequence[RawSample], spec: ScenarioSpec, rng: np.random.Generator
) -> list[list[Placed]]:
    result = []
    for shard in _aligned(samples, spec, rng):
        placed = []
        for index in shard:
            drop_image, drop_text = rng.random() < spec.beta, rng.random() < spec.beta
            if drop_image and drop_text:
                keep_image = rng.random() < 0.5
                drop_image, drop_text = not keep_image, keep_image
            placed.append(Placed(samples[index], not drop_image, not drop_text))
        result.append(placed)
    return result


def _roles(spec: ScenarioSpec, rng: np.random.Generator) -> list[str]:
    total = spec.image_clients + spec.text_clients
    image_count = round(spec.clients * spec.image_clients / total)
    roles = ["image"] * image_count + ["text"] * (spec.clients - image_count)
    return [roles[i] for i in rng.permutation(spec.clients)]


def _hybrid_keeps(spec: ScenarioSpec, rng: np.random.Generator) -> list[tuple[bool, bool]]:
    keeps = []
    for _ in range(spec.clients):
        image, text = rng.random() < spec.keep_prob, rng.random() < spec.keep_prob
        if not (image or text):
            image = rng.random() < 0.5
            text = not image
        keeps.append((image, text))
    return keeps


def _by_modality(
    datasets: Sequence[Sequence[RawSample]],
    keeps: list[tuple[bool, bool]],
    rng: np.random.Generator,
) -> list[list[Placed]]:
    """Single-modal data sets: each split evenly over the clients keeping its modality."""
    result: list[list[Placed]] = [[] for _ in keeps]
    for samples in datasets:
        modality = 0 if samples[0].has_image else 1
        holders = [c for c, keep in enumerate(keeps) if keep[modality]]
        if not holders:
            continue
        for client, shard in zip(holders, even_split(len(samples), len(holders), rng), strict=True):
            result[client].extend(_full(samples, shard))
    return result


def partition(
    datasets: Sequence[Sequence[RawSample]], *, full_modal: bool, spec: ScenarioSpec
) -> list[list[Placed]]:
    """The samples of each client. `datasets` holds one full-modal data set, or single-modal
    ones (for cross and hybrid: one image-modal and one text-modal)."""
    if spec.scenario not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {spec.scenario!r}; choose one of {SCENARIOS}")
    if spec.clients < 1:
        raise ScenarioError("--clients must be at least 1")
    for name, value in (("beta", spec.beta), ("keep-prob", spec.keep_prob)):
        if not 0 <= value <= 1:
            raise ScenarioError(f"--{name} {value} is not a probability; give a value in [0, 1]")
    rng = np.random.default_rng(spec.seed)
    if full_modal and len(datasets) != 1:
        raise ScenarioError("give one full-modal data set")
    samples = [s for d in datasets for s in d]
    if not samples:
        raise ScenarioError("the data sets hold no training samples")
    if spec.scenario == "aligned":
        return [_full(samples, shard) for shard in _aligned(samples, spec, rng)]
    if spec.scenario == "missing":
        if not full_modal:
            raise ScenarioError("the missing scenario needs a full-modal data set")
        return _missing(samples, spec, rng)
    if spec.scenario == "cross":
        roles = _roles(spec, rng)
        keeps = [(role == "image", role == "text") for role in roles]
    else:
        keeps = _hybrid_keeps(spec, rng)
    if not full_modal:
        return _by_modality(datasets, keeps, rng)
    shards = _aligned(samples, spec, rng)
    return [
        [Placed(samples[i], image, text) for i in shard]
        for shard, (image, text) in zip(shards, keeps, strict=True)
    ]
