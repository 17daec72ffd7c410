"""When a client is online: always, a seeded Markov on/off process, or recorded windows.

Every availability answers two questions on the simulated clock: ``online(t)`` and
``next_change(t)`` (the first time after ``t`` at which ``online`` flips; ``inf`` if never).
The engine needs no more: a task that starts at ``s`` and takes ``d`` seconds completes only if
the client is online at ``s`` and ``next_change(s) >= s + d``; otherwise the client left
mid-task, which is a dropout (``fedkit.sim.devices.fate``).

Markov timelines are drawn from one stream keyed by (seed, client), extended lazily and cached,
so the answer for a given ``t`` does not depend on the order of the questions.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedkit import rng as frng


class Availability(Protocol):
    def online(self, t: float) -> bool: ...
    def next_change(self, t: float) -> float: ...


@dataclass(frozen=True)
class Always:
    """Online at every instant (the default: today's behaviour)."""

    def online(self, t: float) -> bool:
        return True

    def next_change(self, t: float) -> float:
        return math.inf

    def for_client(self, seed: int, client: str) -> Always:
        return self


ALWAYS = Always()


@dataclass(frozen=True)
class Windows:
    """Online inside half-open windows ``[start, end)`` (seconds), sorted and disjoint.

    With ``period`` the pattern repeats: ``t`` is read modulo ``period`` (FedScale's behaviour
    traces: ``norm_time = t % finish_time``). Without it, the client is offline after the last
    window. Build with :func:`windows`, which sorts, merges and validates.
    """

    starts: tuple[float, ...]
    ends: tuple[float, ...]
    period: float | None = None

    def _local(self, t: float) -> tuple[float, float]:
        if self.period is None:
            return 0.0, t
        u = t % self.period
        return t - u, u

    def online(self, t: float) -> bool:
        _, u = self._local(t)
        i = bisect.bisect_right(self.starts, u) - 1
        return i >= 0 and u < self.ends[i]

    def next_change(self, t: float) -> float:
        if not self.starts:
            return math.inf
        base, u = self._local(t)
        i = bisect.bisect_right(self.starts, u) - 1
        p = self.period
        if i >= 0 and u < self.ends[i]:  # online: until this window ends
            end = self.ends[i]
            if p is not None and end >= p and self.starts[0] <= 0.0:  # wraps into the next period
                return math.inf if len(self.starts) == 1 else base + p + self.ends[0]
            return base + end
        if i + 1 < len(self.starts):
            return base + self.starts[i + 1]
        return math.inf if p is None else base + p + self.starts[0]


def windows(pairs: Iterable[tuple[float, float]], period: float | None = None) -> Windows:
    """Validated :class:`Windows`: finite ``0 <= start < end`` (``<= period``); overlapping or
    touching windows are merged."""
    if period is not None and not (math.isfinite(period) and period > 0):
        raise ValueError(f"period must be a positive number of seconds, got {period!r}")
    spans = []
    for start, end in pairs:
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise ValueError(f"window [{start}, {end}) must satisfy 0 <= start < end")
        if period is not None and end > period:
            raise ValueError(f"window [{start}, {end}) ends after the period {period}")
        spans.append((start, end))
    spans.sort()
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return Windows(tuple(s for s, _ in merged), tuple(e for _, e in merged), period)


@dataclass(frozen=True)
class MarkovSpec:
    """Two-state continuous-time Markov on/off process: exponential holding times with means
    ``mean_on_s`` and ``mean_off_s``; long-run online fraction on / (on + off)."""

    mean_on_s: float
    mean_off_s: float

    def __post_init__(self) -> None:
        for name in ("mean_on_s", "mean_off_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"markov availability: {name} must be > 0 seconds, got {v!r}")

    def for_client(self, seed: int, client: str) -> Markov:
        return Markov(self.mean_on_s, self.mean_off_s, seed, client)


_BLOCK = 64


@dataclass(frozen=True)
class Markov:
    """One client's on/off timeline, drawn from ``frng.rng(seed, "availability", client)``.

    It starts in the stationary distribution (online with probability on / (on + off)); by
    memorylessness the first holding time is exponential too, so ``online(t)`` is stationary.
    """

    mean_on_s: float
    mean_off_s: float
    seed: int
    client: str
    _cache: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def _timeline(self, t: float) -> tuple[bool, list[float]]:
        c = self._cache
        if not c:
            g = frng.rng(self.seed, "availability", self.client)
            c["gen"] = g
            c["first_on"] = bool(g.random() < self.mean_on_s / (self.mean_on_s + self.mean_off_s))
            c["edges"] = []
            c["last"] = 0.0
        edges: list[float] = c["edges"]
        while not edges or edges[-1] <= t:
            means = np.empty(_BLOCK)
            on_first = c["first_on"] == (len(edges) % 2 == 0)
            means[0::2] = self.mean_on_s if on_first else self.mean_off_s
            means[1::2] = self.mean_off_s if on_first else self.mean_on_s
            steps = np.cumsum(c["gen"].exponential(1.0, _BLOCK) * means) + c["last"]
            edges.extend(steps.tolist())
            c["last"] = edges[-1]
        return c["first_on"], edges

    def online(self, t: float) -> bool:
        first_on, edges = self._timeline(t)
        flips = bisect.bisect_right(edges, t)
        return first_on == (flips % 2 == 0)

    def next_change(self, t: float) -> float:
        _, edges = self._timeline(t)
        return edges[bisect.bisect_right(edges, t)]


AvailabilitySpec = Always | MarkovSpec
"""What a device profile says; ``spec.for_client(seed, client)`` gives the client's timeline."""


def online_fraction(av: Availability, t0: float, t1: float, max_changes: int = 100_000) -> float:
    """Fraction of ``[t0, t1)`` spent online, by walking the changes."""
    if not t1 > t0:
        raise ValueError(f"need t1 > t0, got [{t0}, {t1})")
    t, total = t0, 0.0
    for _ in range(max_changes):
        nxt = min(av.next_change(t), t1)
        if av.online(t):
            total += nxt - t
        if nxt >= t1:
            return total / (t1 - t0)
        t = nxt
    raise ValueError(f"more than {max_changes} availability changes in [{t0}, {t1})")
