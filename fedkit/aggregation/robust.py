"""Robust reducers beyond median, trimmed mean and Krum: Bulyan, centered clipping, FLTrust,
norm bounding.

References:
- ``bulyan``: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning
  in Byzantium", ICML 2018.
- ``centered_clip``: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
  Optimization", ICML 2021.
- ``fltrust``: Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping", NDSS 2021.
- ``norm_bound``: Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
  arXiv 1911.07963, 2019.

As in ``reduce.py``: float64 accumulation in the order given, results cast back to each array's
dtype, one client one vote (no weighting by self-reported example counts), so the same updates
give a bit-identical delta. Norms and distances are over all arrays of an update together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkit.aggregation.base import Reduce, cast_like, check_int, check_real
from fedkit.aggregation.reduce import _check_updates
from fedkit.types import Params, Update

_F64 = np.float64

ROOT_CLIENT = "__fltrust_root__"
"""Client id of the server's own root-set update when FLTrust gets it among the updates."""


def _flat(u: Update) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=_F64).ravel() for a in u.delta])


def _unflat(x: np.ndarray, ref: list[tuple[tuple[int, ...], np.dtype]]) -> Params:
    out: Params = []
    start = 0
    for shape, dtype in ref:
        size = math.prod(shape)
        out.append(cast_like(x[start : start + size].reshape(shape), dtype))
        start += size
    return out


# --- Bulyan -----------------------------------------------------------------------------------


def _sq_distances(flat: np.ndarray) -> np.ndarray:
    """Pairwise squared L2 distances between rows, one difference at a time (no n*n*d)."""
    n = len(flat)
    dist = np.zeros((n, n), dtype=_F64)
    for i in range(n):
        for j in range(i + 1, n):
            d = flat[i] - flat[j]
            dist[i, j] = dist[j, i] = float(np.dot(d, d))
    return dist


def _krum_pick(dist: np.ndarray, f: int) -> int:
    """Position of the Krum choice given the pool's distance matrix (ties: the earlier one)."""
    r = len(dist)
    closest = min(r - 1, max(1, r - f - 2))
    scores = [np.sort(np.delete(dist[i], i))[:closest].sum() for i in range(r)]
    return int(np.argmin(scores))


@dataclass(frozen=True)
class Bulyan:
    """Bulyan: pick ``theta = n - 2f`` updates by repeated Krum, then per coordinate average
    the ``beta = theta - 2f`` selected values closest to their median.

    Needs ``n >= 4f + 3``. Krum's neighbour count is ``max(1, r - f - 2)`` over the ``r``
    updates still in the pool (as Flower does near the end of the selection); ties go to the
    earlier update, both in the Krum picks and among values equally far from the median.
    """

    f: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "f", check_int("f", self.f, lo=0))

    def __call__(self, updates: Sequence[Update]) -> Params:
        ref = _check_updates(updates)
        n, f = len(updates), self.f
        if n < 4 * f + 3:
            raise ValueError(
                f"bulyan with f={f} needs at least 4f + 3 = {4 * f + 3} updates, got {n}"
            )
        pool = list(range(n))
        flat = np.stack([_flat(u) for u in updates])
        dist = _sq_distances(flat)
        chosen: list[int] = []
        for _ in range(n - 2 * f):
            pick = pool[_krum_pick(dist[np.ix_(pool, pool)], f)]
            chosen.append(pick)
            pool.remove(pick)
        chosen.sort()  # the coordinate step below is order-free; sorting keeps it reproducible
        sel = flat[chosen]  # (theta, d)
        beta = len(chosen) - 2 * f
        med = np.median(sel, axis=0)
        order = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
        closest = np.take_along_axis(sel, order, axis=0)
        return _unflat(closest.sum(axis=0) / float(beta), ref)


def bulyan(f: int = 0) -> Reduce:
    """Bulyan reducer tolerating ``f`` Byzantine clients (``n >= 4f + 3``)."""
    return Bulyan(f)


# --- centered clipping ------------------------------------------------------------------------


def centered_clip(
    updates: Sequence[Update], tau: float, iters: int = 1, start: Params | None = None
) -> Params:
    """``v <- v + mean_i (x_i - v) * min(1, tau / ||x_i - v||)``, ``iters`` times from ``start``.

    The paper starts from the previous round's aggregate (with client momentum, one iteration
    suffices); pass it as ``start`` to keep that state. ``None`` starts at zero, the "no change"
    delta, which is what the stateless :class:`CenteredClip` reducer does.
    """
    t = check_real("tau", tau, lo=0.0, lo_open=True)
    it = check_int("iters", iters, lo=1)
    ref = _check_updates(updates)
    flat = np.stack([_flat(u) for u in updates])
    if start is None:
        v = np.zeros(flat.shape[1], dtype=_F64)
    else:
        if [np.shape(a) for a in start] != [s for s, _ in ref]:
            raise ValueError("centered_clip: start is not shaped like the updates")
        v = np.concatenate([np.asarray(a, dtype=_F64).ravel() for a in start])
    for _ in range(it):
        diff = flat - v
        norms = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        scale = np.where(norms > t, t / np.where(norms > 0, norms, 1.0), 1.0)
        v = v + (diff * scale[:, None]).sum(axis=0) / float(len(updates))
    return _unflat(v, ref)


@dataclass(frozen=True)
class CenteredClip:
    """Stateless centered clipping from zero; each client moves the result by at most
    ``tau / n`` per iteration. Tune ``tau`` near the honest updates' norm."""

    tau: float = 1.0
    iters: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", check_real("tau", self.tau, lo=0.0, lo_open=True))
        object.__setattr__(self, "iters", check_int("iters", self.iters, lo=1))

    def __call__(self, updates: Sequence[Update]) -> Params:
        return centered_clip(updates, self.tau, self.iters)


def centered_clipping(tau: float = 1.0, iters: int = 3) -> Reduce:
    """Centered clipping reducer (radius ``tau``, ``iters`` iterations from zero)."""
    return CenteredClip(tau, iters)


# --- FLTrust ----------------------------------------------------------------------------------


def fltrust(updates: Sequence[Update], root: Params) -> Params:
    """FLTrust: ``sum_i TS_i * g_i * ||g0|| / ||g_i|| / sum_i TS_i``, ``TS_i = relu(cos(g_i, g0))``.

    ``root`` (``g0``) is the server's own delta this round, trained from the current global
    params on its small clean root set. Clients pointing away from it get no say, and each
    counted update is rescaled to the root's norm, so scaling attacks buy nothing. If no client
    has positive trust the result is zero (the model does not move).
    """
    ref = _check_updates(updates)
    if [np.shape(a) for a in root] != [s for s, _ in ref]:
        raise ValueError("fltrust: root update is not shaped like the client updates")
    g0 = np.concatenate([np.asarray(a, dtype=_F64).ravel() for a in root])
    n0 = float(np.linalg.norm(g0))
    if n0 == 0.0 or not math.isfinite(n0):
        raise ValueError(f"fltrust: root update norm is {n0}; it must be finite and non-zero")
    acc = np.zeros_like(g0)
    total = 0.0
    for u in updates:
        g = _flat(u)
        ng = float(np.linalg.norm(g))
        if ng == 0.0 or not math.isfinite(ng):
            continue  # no direction (or garbage): no trust
        ts = max(0.0, float(np.dot(g, g0)) / (ng * n0))
        if ts > 0.0:
            acc += ts * (n0 / ng) * g
            total += ts
    return _unflat(acc / total if total > 0.0 else acc, ref)


@dataclass(frozen=True)
class FLTrust:
    """FLTrust as a reducer: the server's root-set update travels among the updates under
    the reserved client id :data:`ROOT_CLIENT` (the engine appends it each round, computed from
    that round's global params); the others are scored against it. See :func:`fltrust`."""

    root_client: str = ROOT_CLIENT

    def __call__(self, updates: Sequence[Update]) -> Params:
        roots = [u for u in updates if u.client == self.root_client]
        if len(roots) != 1:
            raise ValueError(
                f"fltrust needs exactly one root-set update from client {self.root_client!r} "
                f"among the updates (the server trains it on its root set), got {len(roots)}"
            )
        clients = [u for u in updates if u.client != self.root_client]
        if not clients:
            raise ValueError("fltrust got the root-set update but no client updates")
        return fltrust(clients, roots[0].delta)


# --- norm bounding ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NormBound:
    """Norm bounding: clip each update to L2 norm ``max_norm`` on the server, then average
    unweighted. Bounds a model-replacement (scaling) attacker's pull to ``max_norm / n``;
    unlike the rank-based rules it keeps every honest update."""

    max_norm: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "max_norm", check_real("max_norm", self.max_norm, lo=0.0, lo_open=True)
        )

    def __call__(self, updates: Sequence[Update]) -> Params:
        ref = _check_updates(updates)
        acc = np.zeros(sum(math.prod(s) for s, _ in ref), dtype=_F64)
        for u in updates:
            g = _flat(u)
            norm = float(np.linalg.norm(g))
            acc += g if norm <= self.max_norm else g * (self.max_norm / norm)
        return _unflat(acc / float(len(updates)), ref)


def norm_bound(max_norm: float = 1.0) -> Reduce:
    """Norm-bounding reducer: clip each update to ``max_norm``, then the plain mean."""
    return NormBound(max_norm)


__all__ = [
    "ROOT_CLIENT",
    "Bulyan",
    "CenteredClip",
    "FLTrust",
    "NormBound",
    "bulyan",
    "centered_clip",
    "centered_clipping",
    "fltrust",
    "norm_bound",
]
