"""Reduce functions: combine client deltas into one server delta.

References:
- ``weighted_mean``: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017 (FedAvg weights clients by their number of examples).
- ``median``, ``trimmed_mean``: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018.
- ``krum``: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Krum and Multi-Krum).

Every reducer accumulates in float64, sums in the order the updates are given and casts each
result back to that array's dtype, so the same updates in the same order give a bit-identical
delta: the in-process and gRPC runs of a scenario can then agree exactly. The robust reducers
are unweighted (one client, one vote): weighting by self-reported ``num_examples`` would let an
attacker buy influence.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkit.aggregation.base import Reduce, cast_like, check_int, check_real
from fedkit.types import Params, Update

_F64 = np.float64


def _check_updates(updates: Sequence[Update]) -> list[tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes every update must share (those of the first one)."""
    if len(updates) == 0:
        raise ValueError("cannot aggregate zero updates")
    first = updates[0]
    ref = [(np.shape(a), np.asarray(a).dtype) for a in first.delta]
    for u in updates[1:]:
        if len(u.delta) != len(ref):
            raise ValueError(
                f"update from client {u.client!r} has {len(u.delta)} arrays, "
                f"client {first.client!r} has {len(ref)}"
            )
        for k, (a, (shape, dtype)) in enumerate(zip(u.delta, ref, strict=True)):
            a = np.asarray(a)
            if a.shape != shape:
                raise ValueError(
                    f"update from client {u.client!r}: array {k} has shape {a.shape}, "
                    f"client {first.client!r} sent {shape}"
                )
            if a.dtype != dtype:
                raise ValueError(
                    f"update from client {u.client!r}: array {k} has dtype {a.dtype}, "
                    f"client {first.client!r} sent {dtype}"
                )
    return ref


def _stack(updates: Sequence[Update], k: int) -> np.ndarray:
    """Array ``k`` of every update as one float64 array with a leading client axis."""
    return np.stack([np.asarray(u.delta[k], dtype=_F64) for u in updates])


def _mean_with(updates: Sequence[Update], weights: Sequence[int]) -> Params:
    ref = _check_updates(updates)
    total = sum(weights)  # exact: Python ints
    if total <= 0:
        raise ValueError("weighted mean needs at least one update with num_examples > 0")
    out: Params = []
    for k, (shape, dtype) in enumerate(ref):
        acc = np.zeros(shape, dtype=_F64)
        for u, w in zip(updates, weights, strict=True):
            acc += float(w) * np.asarray(u.delta[k], dtype=_F64)
        out.append(cast_like(acc / float(total), dtype))
    return out


def weighted_mean(updates: Sequence[Update]) -> Params:
    """Sum_i n_i * delta_i / sum_i n_i (FedAvg): clients with more data pull harder."""
    weights: list[int] = []
    for u in updates:
        n = u.num_examples
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(
                f"update from client {u.client!r}: num_examples must be an integer >= 0, got {n!r}"
            )
        weights.append(int(n))
    return _mean_with(updates, weights)


def mean(updates: Sequence[Update]) -> Params:
    """Unweighted mean: every client counts once, whatever it reports about its data."""
    return _mean_with(updates, [1] * len(updates))


def median(updates: Sequence[Update]) -> Params:
    """Coordinate-wise median; robust to fewer than half the clients being arbitrary."""
    ref = _check_updates(updates)
    return [cast_like(np.median(_stack(updates, k), axis=0), dt) for k, (_, dt) in enumerate(ref)]


@dataclass(frozen=True)
class TrimmedMean:
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest values, then average."""

    beta: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "beta", check_real("beta", self.beta, lo=0.0, hi=0.5, hi_open=True)
        )

    def __call__(self, updates: Sequence[Update]) -> Params:
        ref = _check_updates(updates)
        n = len(updates)
        cut = math.floor(self.beta * n + 1e-9)  # 0.29 * 100 is 28.999...; we mean 29
        out: Params = []
        for k, (_, dtype) in enumerate(ref):
            kept = np.sort(_stack(updates, k), axis=0)[cut : n - cut]
            out.append(cast_like(kept.sum(axis=0) / float(n - 2 * cut), dtype))
        return out


def trimmed_mean(beta: float = 0.2) -> Reduce:
    """Trimmed mean reducer; ``beta`` in [0, 0.5) is the fraction cut on each side."""
    return TrimmedMean(beta)


@dataclass(frozen=True)
class Krum:
    """Krum (``m=1``) / Multi-Krum: average the ``m`` updates with the lowest Krum score.

    The score of update i is the sum of squared L2 distances (over all arrays) to its
    ``n - f - 2`` nearest other updates. Ties go to the earlier update; the chosen updates are
    averaged unweighted in their original order. ``m=None`` means ``n - f``.
    """

    f: int
    m: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "f", check_int("f", self.f, lo=0))
        if self.m is not None:
            object.__setattr__(self, "m", check_int("m", self.m, lo=1))

    def __call__(self, updates: Sequence[Update]) -> Params:
        _check_updates(updates)
        n, f = len(updates), self.f
        closest = n - f - 2
        if closest < 1:
            raise ValueError(f"krum with f={f} needs at least {f + 3} updates, got {n}")
        m = n - f if self.m is None else self.m
        if m > n - f:
            raise ValueError(f"multi-krum with f={f} can keep at most n - f = {n - f}, m={m}")
        flat = np.stack(
            [np.concatenate([np.asarray(a, dtype=_F64).ravel() for a in u.delta]) for u in updates]
        )
        dist = np.zeros((n, n), dtype=_F64)
        for i in range(n):
            for j in range(i + 1, n):
                d = flat[i] - flat[j]
                dist[i, j] = dist[j, i] = float(np.dot(d, d))
        scores = np.array(
            [np.sort(np.delete(dist[i], i))[:closest].sum() for i in range(n)], dtype=_F64
        )
        chosen = sorted(np.argsort(scores, kind="stable")[:m].tolist())
        return mean([updates[i] for i in chosen])


def krum(f: int = 0, m: int | None = 1) -> Reduce:
    """Krum reducer tolerating ``f`` Byzantine clients; ``m > 1`` (or None) gives Multi-Krum."""
    return Krum(f, m)


@dataclass(frozen=True)
class SumOver:
    """``sum_i delta_i / n`` for a fixed ``n``: the mean over a population of ``n`` clients in
    which the absent ones count as zero (FedAU divides by all N clients, not by |S|)."""

    n: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", check_int("n", self.n, lo=1))

    def __call__(self, updates: Sequence[Update]) -> Params:
        ref = _check_updates(updates)
        if len(updates) > self.n:
            raise ValueError(f"{len(updates)} updates but the population has n={self.n} clients")
        out: Params = []
        for k, (shape, dtype) in enumerate(ref):
            acc = np.zeros(shape, dtype=_F64)
            for u in updates:
                acc += np.asarray(u.delta[k], dtype=_F64)
            out.append(cast_like(acc / float(self.n), dtype))
        return out


def sum_over(n: int) -> Reduce:
    """Reducer ``sum of deltas / n`` (a mean over ``n`` clients, absent ones counting zero)."""
    return SumOver(n)
