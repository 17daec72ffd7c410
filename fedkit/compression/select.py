"""Layer-wise adaptive compression: pick one setting per layer under a total error budget.

Reference: Markov, Alimohammadi, Frantar, Alistarh, "L-GreCo: Layerwise-Adaptive Gradient
Compression for Efficient and Accurate Deep Learning", MLSys 2024. Given, for every layer, the
error and wire size of each candidate setting (PowerSGD rank, top-k ratio, quantization bits),
:func:`select` solves

    minimise  sum_l size[l, c_l]   subject to   sum_l error[l, c_l] <= budget

exactly up to the error discretisation, by a knapsack dynamic program over ``buckets`` (10,000)
error buckets of width budget/buckets, then backtracks the choices. Errors are rounded *up* to
whole buckets, so the result never exceeds the budget; the default budget is the total error
of a uniform setting, and the uniform choice is returned if nothing cheaper fits, so the result
is never larger than uniform compression ("no worse than uniform"). Errors are squared L2 norms
(additive over layers: the squared error of the whole update).

Usage::

    spec = plan(delta, "powersgd", candidates=[1, 2, 4, 8, 16], uniform=4)
    codec = make("ef:" + spec)            # e.g. "ef:powersgd(rank=[8,1,4,2,...])"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.compression.base import format_value
from fedkit.compression.frame import dtype_code
from fedkit.compression.pipeline import FLOAT_CODES
from fedkit.compression.powersgd import matrix_shape, mode
from fedkit.compression.spec import make

FAMILIES: dict[str, str] = {"powersgd": "rank", "topk": "ratio", "quant": "bits"}
"""Codec families the table helper knows, with the per-tensor parameter it varies."""


@dataclass(frozen=True)
class Candidate:
    """One setting for one layer: its squared L2 error and its size in bytes."""

    setting: Any
    error: float
    size: int


def _uniform_pick(table: Sequence[Sequence[Candidate]], uniform: Any) -> list[Candidate]:
    picks = []
    for i, cands in enumerate(table):
        match = [c for c in cands if c.setting == uniform]
        if match:
            picks.append(match[0])
        elif len(cands) == 1:
            picks.append(cands[0])
        else:
            raise ValueError(f"layer {i} has no candidate with setting {uniform!r}")
    return picks


def select(
    table: Sequence[Sequence[Candidate]],
    budget: float | None = None,
    *,
    uniform: Any = None,
    buckets: int = 10_000,
) -> list[Candidate]:
    """Per-layer candidates minimising total size with total error <= ``budget``.

    ``budget`` defaults to the total error of the ``uniform`` setting (which every layer with
    more than one candidate must offer). Raises ``ValueError`` if no choice fits the budget.

    >>> small = [Candidate(1, 4.0, 10), Candidate(2, 1.0, 20), Candidate(4, 0.0, 40)]
    >>> big = [Candidate(1, 0.9, 100), Candidate(2, 0.8, 200), Candidate(4, 0.7, 400)]
    >>> [c.setting for c in select([small, big], uniform=2)]  # budget 1.8, 140 vs 220 bytes
    [4, 1]
    """
    if not table or any(not cands for cands in table):
        raise ValueError("every layer needs at least one candidate")
    base = _uniform_pick(table, uniform) if uniform is not None else None
    if budget is None:
        if base is None:
            raise ValueError("give an error budget or a uniform setting")
        budget = sum(c.error for c in base)
    base_ok = base is not None and sum(c.error for c in base) <= budget * (1 + 1e-12)
    if budget <= 0:
        zero: list[Candidate] = []
        for i, cands in enumerate(table):
            exact = [c for c in cands if c.error <= 0]
            if not exact:
                raise ValueError(f"layer {i} has no zero-error candidate for a zero budget")
            zero.append(min(exact, key=lambda c: c.size))
        return zero
    width = budget / buckets

    def fits(picks: list[Candidate]) -> bool:
        return sum(c.error for c in picks) <= budget * (1 + 1e-9)

    # Rounding errors up never overshoots the budget but wastes up to a bucket per layer (the
    # uniform choice itself may not fit); rounding down uses the budget fully but may overshoot
    # by a hair. Solve both and keep the smaller choice that truly fits.
    found = [
        p
        for rnd in (math.floor, math.ceil)
        if (p := _knapsack(table, [[rnd(c.error / width) for c in cands] for cands in table], buckets))
        is not None and fits(p)
    ]
    if not found:
        if base is not None and base_ok:
            return base
        raise ValueError(f"no choice of candidates fits the error budget {budget}")
    picks = min(found, key=lambda p: sum(c.size for c in p))
    if base is not None and base_ok and sum(c.size for c in base) <= sum(c.size for c in picks):
        return base
    return picks


def _knapsack(
    table: Sequence[Sequence[Candidate]], weights: list[list[int]], buckets: int
) -> list[Candidate] | None:
    """Least total size with total weight <= buckets (None if nothing fits), by DP."""
    dp = np.zeros(buckets + 1)  # dp[b]: least size of the layers so far with weight <= b
    choice = np.empty((len(table), buckets + 1), dtype=np.int32)
    for layer, cands in enumerate(table):
        new = np.full(buckets + 1, np.inf)
        arg = np.full(buckets + 1, -1, dtype=np.int32)
        for o, c in enumerate(cands):
            w = weights[layer][o]
            if w > buckets:
                continue
            cost = np.full(buckets + 1, np.inf)
            cost[w:] = dp[: buckets + 1 - w] + c.size
            better = cost < new
            new[better] = cost[better]
            arg[better] = o
        dp, choice[layer] = new, arg
    if not np.isfinite(dp[buckets]):
        return None
    picks: list[Candidate] = []
    b = buckets
    for layer in range(len(table) - 1, -1, -1):
        o = int(choice[layer, b])
        picks.append(table[layer][o])
        b -= weights[layer][o]
    picks.reverse()
    return picks


def _sq(a: np.ndarray) -> float:
    a = a.astype(np.float64, copy=False).ravel()
    return float(np.dot(a, a))


def layer_table(
    arrays: Sequence[np.ndarray],
    family: str,
    candidates: Sequence[Any],
    *,
    then: str = "",
) -> list[list[Candidate]]:
    """Error and wire size of every candidate setting on every float array of ``arrays``.

    Sizes are real payload bytes of ``family(param=c)|then`` on that array alone; errors are
    measured on the decoded array, except PowerSGD's, which is the optimal rank-r error
    (sum of the squared tail singular values) that warm-started power iteration approaches.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    param = FAMILIES[family]
    rng = np.random.default_rng(0)
    table = []
    for a in arrays:
        if dtype_code(a.dtype) not in FLOAT_CODES:
            continue
        x = np.asarray(a, np.float32)
        sv = None
        if family == "powersgd" and x.ndim >= 2 and x.size:
            sv = np.linalg.svd(x.reshape(matrix_shape(x.shape)), compute_uv=False)
            tail = np.concatenate([np.cumsum((sv.astype(np.float64) ** 2)[::-1])[::-1], [0.0]])
        row = []
        for c in candidates:
            spec = f"{family}({param}={format_value(c)})" + (f"|{then}" if then else "")
            codec = make(spec)
            _, enc = codec.encode(codec.init([x]), [x], rng)
            if sv is not None and mode(x.shape, int(c)) == "lowrank" and not then:
                err = float(tail[min(int(c), sv.size)])
            else:
                err = _sq(codec.decode(enc)[0] - x)
            row.append(Candidate(c, err, len(enc.data)))
        table.append(row)
    return table


def plan(
    arrays: Sequence[np.ndarray],
    family: str,
    candidates: Sequence[Any],
    uniform: Any,
    *,
    then: str = "",
    budget_scale: float = 1.0,
) -> str:
    """A per-layer spec (e.g. ``"powersgd(rank=[8,1,4])|fp16"``) for ``arrays``.

    The error budget is ``budget_scale`` times the total error of ``uniform`` on every layer.
    """
    table = layer_table(arrays, family, candidates, then=then)
    base = _uniform_pick(table, uniform)
    picks = select(table, budget_scale * sum(c.error for c in base), uniform=uniform)
    settings = format_value([c.setting for c in picks])
    return make(f"{family}({FAMILIES[family]}={settings})" + (f"|{then}" if then else "")).spec
