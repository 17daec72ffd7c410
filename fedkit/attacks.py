"""Attack simulators: malicious clients that tamper with their updates or their labels.

References:
- sign flip and Gaussian noise: the standard Byzantine baselines, e.g. Blanchard et al.,
  NeurIPS 2017 (Gaussian), Damaskinos et al. / Allen-Zhu et al. (sign flip).
- scaling (model replacement): Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor
  Federated Learning", AISTATS 2020: boost the update by ``n / lr`` so it replaces the average.
- "a little is enough": Baruch, Baruch, Goldberg, NeurIPS 2019: every attacker sends
  ``mu - z * sigma`` (per coordinate, over the honest updates), small enough to pass
  median/Krum-style filters, with ``z`` from the number of clients needed for a majority.
- label flip: Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning
  Systems", ESORICS 2020.

An update attack is a transform over the round's whole set of updates (``ALIE`` needs the
others' statistics): ``attack(updates, malicious, seed=, round=) -> updates``, replacing only
the malicious clients' entries and keeping order. Which clients are malicious is fixed for the
run by :func:`choose_malicious`. Draws are keyed by ``(seed, purpose, round, client)``.
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from fedkit import rng as frng
from fedkit.types import ClientId, Params, Update

_F64 = np.float64


def _real(
    name: str, value: Any, *, lo: float, lo_open: bool = False, hi: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        extra = f" and <= {hi:g}" if hi is not None else ""
        raise ValueError(f"{name} must be {bound}{extra}, got {value!r}")
    return v


def assign_malicious(
    names: Sequence[ClientId], fractions: Sequence[float], seed: int
) -> list[frozenset[ClientId]]:
    """Disjoint malicious sets, one per attack: ``floor(fraction * len(names))`` clients each.

    One seeded permutation of the sorted names is cut into consecutive slices, so the result
    does not depend on the order names come in and two attacks never share a client.
    """
    fs = [_real(f"fractions[{i}]", f, lo=0.0, hi=1.0) for i, f in enumerate(fractions)]
    pool = sorted(set(names))
    if len(pool) != len(names):
        raise ValueError("client names must be unique")
    counts = [math.floor(f * len(pool) + 1e-9) for f in fs]  # 0.3 * 10 is 2.999...; we mean 3
    if sum(counts) > len(pool):
        raise ValueError(f"attack fractions {list(fs)} add up to more than all {len(pool)} clients")
    perm = frng.rng(seed, "malicious").permutation(len(pool))
    out, start = [], 0
    for k in counts:
        out.append(frozenset(pool[i] for i in perm[start : start + k]))
        start += k
    return out


def choose_malicious(names: Sequence[ClientId], fraction: float, seed: int) -> frozenset[ClientId]:
    """``floor(fraction * len(names))`` clients drawn by ``seed``, whatever order names come in.

    >>> sorted(choose_malicious([f"c{i}" for i in range(10)], 0.3, seed=0)) == sorted(
    ...     choose_malicious([f"c{i}" for i in reversed(range(10))], 0.3, seed=0))
    True
    """
    return assign_malicious(names, [fraction], seed)[0]


class Attack(Protocol):
    def __call__(
        self, updates: Sequence[Update], malicious: Collection[ClientId], *, seed: int, round: int
    ) -> list[Update]: ...


def _replace(
    updates: Sequence[Update],
    malicious: Collection[ClientId],
    fn: Callable[[Update], Params],
) -> list[Update]:
    bad = frozenset(malicious)
    return [
        Update(u.client, fn(u), u.num_examples, u.metrics) if u.client in bad else u
        for u in updates
    ]


def _cast(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    dt = np.asarray(like).dtype
    return x.astype(dt if np.issubdtype(dt, np.floating) else _F64)


@dataclass(frozen=True)
class SignFlip:
    """Send ``-factor * delta``: push the model the opposite way of one's own training."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        _real("factor", self.factor, lo=0.0, lo_open=True)

    def __call__(
        self, updates: Sequence[Update], malicious: Collection[ClientId], *, seed: int, round: int
    ) -> list[Update]:
        return _replace(
            updates,
            malicious,
            lambda u: [_cast(-self.factor * np.asarray(a, _F64), a) for a in u.delta],
        )


@dataclass(frozen=True)
class Scaling:
    """Model replacement: send ``factor * delta``; ``factor=None`` boosts by the number of
    updates in the round (``n / lr`` with server ``lr = 1``), enough to replace the mean."""

    factor: float | None = None

    def __post_init__(self) -> None:
        if self.factor is not None:
            _real("factor", self.factor, lo=0.0, lo_open=True)

    def __call__(
        self, updates: Sequence[Update], malicious: Collection[ClientId], *, seed: int, round: int
    ) -> list[Update]:
        k = float(len(updates)) if self.factor is None else float(self.factor)
        return _replace(
            updates, malicious, lambda u: [_cast(k * np.asarray(a, _F64), a) for a in u.delta]
        )


@dataclass(frozen=True)
class GaussianNoise:
    """Send pure noise ``N(0, std^2 I)`` shaped like the update instead of the update."""

    std: float = 1.0

    def __post_init__(self) -> None:
        _real("std", self.std, lo=0.0)

    def __call__(
        self, updates: Sequence[Update], malicious: Collection[ClientId], *, seed: int, round: int
    ) -> list[Update]:
        def noise(u: Update) -> Params:
            gen = frng.rng(seed, "attack-gaussian", round, u.client)
            return [_cast(gen.normal(0.0, self.std, size=np.shape(a)), a) for a in u.delta]

        return _replace(updates, malicious, noise)


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n/2 + 1) - f`` honest clients must be won over;
    ``z = Phi^-1((n - s) / n)``."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(f"'a little is enough' has no z for n={n}, f={f} (give z explicitly)")
    return statistics.NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class LittleIsEnough:
    """Every attacker sends ``mu - z * sigma``: the per-coordinate mean and (population) std of
    the benign updates this round, or of the attackers' own honest updates if all are malicious.
    ``z=None`` uses :func:`alie_z` with ``n`` = updates this round and ``f`` = attackers among
    them. All attackers send the same vector."""

    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is not None:
            _real("z", self.z, lo=0.0)

    def __call__(
        self, updates: Sequence[Update], malicious: Collection[ClientId], *, seed: int, round: int
    ) -> list[Update]:
        bad = frozenset(malicious)
        attackers = [u for u in updates if u.client in bad]
        if not attackers:
            return list(updates)
        benign = [u for u in updates if u.client not in bad] or attackers
        z = alie_z(len(updates), len(attackers)) if self.z is None else float(self.z)
        vec: Params = []
        for k, a in enumerate(updates[0].delta):
            stack = np.stack([np.asarray(u.delta[k], _F64) for u in benign])
            vec.append(_cast(stack.mean(axis=0) - z * stack.std(axis=0), a))
        return _replace(updates, bad, lambda u: [v.copy() for v in vec])


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flip data poisoning: ``y -> num_classes - 1 - y`` (a poisoned client trains on it).

    >>> flip_labels(np.array([0, 1, 9]), 10)
    array([9, 8, 0])
    """
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"flip_labels needs integer labels, got dtype {y.dtype}")
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{y.min()}, {y.max()}]")
    return (num_classes - 1 - y).astype(y.dtype)


UPDATE_ATTACKS: Mapping[str, Callable[..., Attack]] = MappingProxyType(
    {
        "sign_flip": SignFlip,
        "scaling": Scaling,
        "gaussian": GaussianNoise,
        "little_is_enough": LittleIsEnough,
    }
)
"""Attacks on updates, by scenario ``kind``. ``label_flip`` is a data attack (:func:`flip_labels`)."""

DATA_ATTACKS: frozenset[str] = frozenset({"label_flip"})
KINDS: tuple[str, ...] = tuple(sorted({*UPDATE_ATTACKS, *DATA_ATTACKS}))


def make_attack(kind: str, **params: Any) -> Attack:
    """Build an update attack by kind, e.g. ``make_attack("scaling", factor=10)``."""
    if kind in DATA_ATTACKS:
        raise ValueError(
            f"{kind!r} poisons data, not updates: apply flip_labels to the client's labels"
        )
    if kind not in UPDATE_ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; known: {', '.join(KINDS)}")
    try:
        return UPDATE_ATTACKS[kind](**params)
    except TypeError as e:
        raise ValueError(f"attack {kind!r}: {e}") from None
