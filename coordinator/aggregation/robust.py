"""Bounded influence and robust combination rules, as pure functions over small inputs.

Each rule sees one block of coordinates of every update at a time (a [K, B] tensor), so that
the coordinator never holds K whole updates in memory:
  - weight-share capping: no update carries more than a set share of the round's weight;
  - L2 clipping: each update scaled to at most a bound (fixed, or a multiple of the round's
    median norm);
  - coordinate-wise trimmed mean and median (Yin et al., 2018), unweighted as published;
  - Krum / Multi-Krum (Blanchard et al., 2017): the updates closest to their K - f - 2
    nearest neighbours are kept and then averaged like any round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def capped_weights(weights: Sequence[float], max_share: float) -> list[float]:
    """Weights lowered so that none exceeds `max_share` of their (new) sum.

    Water-filling: the capped weights all equal c = s * sum(final), which gives
    c = s * sum(uncapped) / (1 - s * #capped); weights above c are capped until none is.
    If the cap cannot hold for K weights (s < 1/K), every update weighs the same.
    """
    if max_share >= 1 or not weights:
        return list(weights)
    if max_share * len(weights) <= 1:
        return [1.0] * len(weights)
    capped: set[int] = set()
    while True:
        free = sum(w for i, w in enumerate(weights) if i not in capped)
        cap = max_share * free / (1 - max_share * len(capped))
        over = {i for i, w in enumerate(weights) if i not in capped and w > cap}
        if not over:
            return [cap if i in capped else w for i, w in enumerate(weights)]
        capped |= over


def median(values: Sequence[float]) -> float:
    """The median, averaging the two middle values of an even count (NumPy's convention)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def clip_scales(norms: Sequence[float], *, bound: float, median_factor: float) -> list[float]:
    """Per update, the factor that brings its L2 norm down to the clipping bound (1: none).
    The bound is `bound`, `median_factor` times the median norm, or the smaller of both;
    0 disables either."""
    limits = [bound] if bound > 0 else []
    if median_factor > 0:
        limits.append(median_factor * median(norms))
    if not limits:
        return [1.0] * len(norms)
    limit = min(limits)
    return [1.0 if n <= limit or n == 0 else limit / n for n in norms]


def trimmed_count(updates: int, fraction: float) -> int:
    """Values dropped at each end of a coordinate: floor(fraction * K), leaving at least one."""
    return min(math.floor(fraction * updates), (updates - 1) // 2)


def trimmed_mean(block: torch.Tensor, trim: int) -> torch.Tensor:
    """[K, B] -> [B]: per coordinate, the mean after dropping the `trim` lowest and highest."""
    ordered, _ = torch.sort(block, dim=0)
    kept = ordered[trim : block.shape[0] - trim]
    return kept.sum(dim=0) / kept.shape[0]


def coordinate_median(block: torch.Tensor) -> torch.Tensor:
    """[K, B] -> [B]: per coordinate, the median (mean of the two middle values if K is even)."""
    ordered, _ = torch.sort(block, dim=0)
    k = block.shape[0]
    if k % 2:
        return ordered[k // 2].clone()
    return (ordered[k // 2 - 1] + ordered[k // 2]) / 2


def gram_block(block: torch.Tensor) -> torch.Tensor:
    """[K, B] -> [K, K] inner products in float64, to be summed over blocks."""
    wide = block.double()
    return wide @ wide.T


def squared_distances(gram: torch.Tensor) -> torch.Tensor:
    """Pairwise squared L2 distances from the Gram matrix of the updates."""
    diagonal = torch.diagonal(gram)
    return (diagonal[:, None] + diagonal[None, :] - 2 * gram).clamp(min=0)


def krum_scores(distances: torch.Tensor, byzantine: int) -> list[float]:
    """Per update, the sum of squared distances to its K - f - 2 nearest other updates."""
    k = distances.shape[0]
    neighbours = k - byzantine - 2
    if neighbours < 1:
        raise ValueError(f"Krum needs at least {byzantine + 3} updates, not {k}")
    scores = []
    for i in range(k):
        others = torch.cat([distances[i, :i], distances[i, i + 1 :]])
        scores.append(float(torch.sort(others).values[:neighbours].sum()))
    return scores


def krum_select(scores: Sequence[float], keep: int) -> list[int]:
    """Indices of the `keep` best-scored updates (lowest score; ties to the lower index)."""
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(ranked[:keep])
