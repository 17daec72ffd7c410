"""Who takes part in a round when the server does not choose: FedAU's participation patterns.

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging", ICLR 2024 (official code IBM/fedau, ``util/util.py``; REFERENCES.md C). Each client
n has a participation probability p_n unknown to the server, and one of three patterns with
long-run rate p_n:

- ``Bernoulli``: independent each round with probability p_n;
- ``MarkovPattern``: a two-state chain per client; to_active = q, to_inactive = q (1/p_n - 1)
  (both scaled down if that exceeds 1), starting in the stationary state; the chain steps once
  before each round is read, as in the reference code;
- ``Cyclic``: cycles of ``cycle`` rounds, active for round(cycle p_n) (>= 1) of them, each
  client starting at a seeded offset inside its inactive stretch.

``participates(pattern, seed, round, client)`` is deterministic: every draw is keyed by
(seed, round, client) (Markov chains replay their rounds from 0, cached per client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedkit import rng as frng


class Pattern(Protocol):
    def participates(self, seed: int, rnd: int, client: str) -> bool: ...


def _check(probs: Mapping[str, float]) -> None:
    bad = {c: p for c, p in probs.items() if not (0 < p <= 1)}
    if bad:
        raise ValueError(f"participation probabilities must be in (0, 1], got {bad}")


def _prob(probs: Mapping[str, float], client: str) -> float:
    try:
        return probs[client]
    except KeyError:
        raise ValueError(f"no participation probability for client {client!r}") from None


def _round(rnd: int) -> None:
    if rnd < 0:
        raise ValueError(f"round must be >= 0, got {rnd}")


@dataclass(frozen=True)
class Bernoulli:
    probs: Mapping[str, float]

    def __post_init__(self) -> None:
        _check(self.probs)

    def participates(self, seed: int, rnd: int, client: str) -> bool:
        _round(rnd)
        p = _prob(self.probs, client)
        return bool(frng.rng(seed, "participation", rnd, client).random() < p)


@dataclass(frozen=True)
class MarkovPattern:
    probs: Mapping[str, float]
    to_active: float = 0.05
    _cache: dict[tuple[int, str], list[bool]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        _check(self.probs)
        if not 0 < self.to_active <= 1:
            raise ValueError(f"markov participation: to_active must be in (0, 1], got {self.to_active}")

    def transitions(self, client: str) -> tuple[float, float]:
        """(to_active, to_inactive) for this client, stationary probability p_n."""
        p = _prob(self.probs, client)
        up, down = self.to_active, self.to_active * (1 / p - 1)
        if down > 1:
            up, down = up / down, 1.0
        return up, down

    def participates(self, seed: int, rnd: int, client: str) -> bool:
        _round(rnd)
        states = self._cache.setdefault((seed, client), [])
        if not states:
            init = frng.rng(seed, "participation-init", client).random() < _prob(self.probs, client)
            states.append(bool(init))  # the state before round 0
        up, down = self.transitions(client)
        while len(states) <= rnd + 1:
            u = frng.rng(seed, "participation", len(states) - 1, client).random()
            on = states[-1]
            states.append(not (u < down) if on else bool(u < up))
        return states[rnd + 1]


@dataclass(frozen=True)
class Cyclic:
    probs: Mapping[str, float]
    cycle: int = 10

    def __post_init__(self) -> None:
        _check(self.probs)
        if self.cycle < 2:
            raise ValueError(f"cyclic participation: cycle must be >= 2 rounds, got {self.cycle}")

    def stretches(self, client: str) -> tuple[int, int]:
        """(active rounds, inactive rounds) per cycle."""
        active = max(1, int(np.round(self.cycle * _prob(self.probs, client))))
        return active, max(1, self.cycle - active)

    def participates(self, seed: int, rnd: int, client: str) -> bool:
        _round(rnd)
        active, inactive = self.stretches(client)
        offset = int(frng.rng(seed, "participation-offset", client).integers(inactive))
        return (rnd - offset) % (active + inactive) < active


def participates(pattern: Pattern, seed: int, rnd: int, client: str) -> bool:
    """Whether ``client`` takes part in round ``rnd`` (>= 0) under ``pattern``."""
    return pattern.participates(seed, rnd, client)


def fedau_probabilities(
    label_counts: Mapping[str, Sequence[float]],
    seed: int,
    alpha: float = 0.1,
    mean: float = 0.1,
    minimum: float = 0.02,
) -> dict[str, float]:
    """Participation probabilities tied to each client's data, as in the FedAU experiments:
    ``p_n = max(minimum, mean x L x <labels_n / |labels_n|, w>)`` with one ``w ~ Dirichlet(alpha
    1_L)`` keyed by seed, so clients holding some labels take part more (capped at 1)."""
    if not label_counts:
        raise ValueError("no clients")
    if not (alpha > 0 and 0 < mean <= 1 and 0 <= minimum <= 1):
        raise ValueError("need alpha > 0, 0 < mean <= 1 and 0 <= minimum <= 1")
    names = sorted(label_counts)
    hist = np.asarray([label_counts[c] for c in names], dtype=float)
    if hist.ndim != 2 or (hist < 0).any() or (hist.sum(1) <= 0).any():
        raise ValueError("label_counts must be non-negative per-label counts, one row per client")
    w = frng.rng(seed, "participation-dirichlet").dirichlet(np.full(hist.shape[1], alpha))
    p = (hist / hist.sum(1, keepdims=True)) @ w * mean * hist.shape[1]
    return {c: float(min(1.0, max(minimum, v))) for c, v in zip(names, p, strict=True)}


def mean_rate(pattern: Pattern, seed: int, client: str, rounds: int) -> float:
    """Observed participation rate over rounds ``0..rounds-1`` (tests, ``describe``)."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    return sum(pattern.participates(seed, r, client) for r in range(rounds)) / rounds

