"""Which silos a round asks: seeded, uniform, and stragglers only when nobody else can."""

from __future__ import annotations

import random

# A silo that missed an attempt is asked last for this many rounds.
STRAGGLER_ROUNDS = 3


def round_rng(seed: int, index: int, attempt: int) -> random.Random:
    """The generator of one attempt of one round: the same run selects the same silos."""
    return random.Random(seed * 1_000_003 + index * 1_009 + attempt)


def choose(available: list[str], k: int, rng: random.Random, *, last: set[str]) -> list[str]:
    """K silos: uniformly among the available ones not in `last`, topped up from `last` only
    when too few are left. Sorted, so that the same seed and silos give the same round."""
    fresh = sorted(s for s in available if s not in last)
    if len(fresh) >= k:
        return sorted(rng.sample(fresh, k))
    stragglers = sorted(s for s in available if s in last)
    return sorted(fresh + rng.sample(stragglers, k - len(fresh)))


def waiting_reason(
    *, eligible: int, needed: int, connected: int, passed_over: list[str], over_cap: list[str]
) -> str:
    """Why a round cannot start yet, for the log, the admin's status and --follow."""
    why = f"{eligible} of {needed} silos available ({connected} connected)"
    if passed_over:
        why += f"; not asked again this round: {', '.join(passed_over)}"
    if over_cap:
        why += f"; declared more samples than the run allows: {', '.join(over_cap)}"
    return why + f"; waiting for {needed - eligible} more"
