"""FedAU: weigh each participant by its estimated participation interval (about 1/p).

Reference: Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
Federated Averaging", ICLR 2024 (arXiv 2306.03401; earlier title "A Lightweight Method for
Tackling Unknown Participation Statistics in Federated Learning"); official code
``IBM/fedau:main.py`` (``weighting_method == 'adaptive'``).

Why: when client n takes part with an unknown probability p_n, FedAvg over the participants is
biased towards the frequent ones. If the server knew p_n it would scale Delta_n by 1/p_n. FedAU
estimates 1/p_n online as the mean gap between client n's participations, which needs nothing
from the client and one counter per client on the server.

Bookkeeping per client, per round (exactly as the official code):
- a participating client gets weight ``omega = mean(recorded intervals)`` (1, i.e. unscaled, if
  none is recorded yet); then the interval ``count + 1`` is recorded and ``count`` reset;
- a non-participating client's ``count`` grows by one; when it reaches the cutoff ``K`` the
  interval ``K`` is recorded and ``count`` reset, so the weight stays below ``K`` for clients that
  vanish (a small K lowers variance and adds bias; ``K=None`` means no cutoff);
- the server moves along ``sum_{n in S} omega_n Delta_n / N`` over all N clients.

Clients are tracked from the first time they take part, counted as present (and absent) since
round 0, so the counters of a client never seen cost nothing: the gap since the last
participation is ``round - since`` and the cutoff's records for it are computed in closed form
when the client next appears. The state is a plain :data:`~fedkit.aggregation.base.State` of
arrays (client names, ``since``, interval sums and counts, the round), so it checkpoints with
``state_to_arrays`` like any optimizer state.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from fedkit.aggregation.base import State, cast_like, check_int
from fedkit.types import ClientId, Update

_I64 = np.int64


def init() -> State:
    """No client seen, round 0."""
    return {
        "clients": [np.zeros(0, dtype="<U1")],
        "since": [np.zeros(0, _I64)],
        "interval_sum": [np.zeros(0, _I64)],
        "interval_count": [np.zeros(0, _I64)],
        "round": [np.zeros((), _I64)],
    }


def _check_cutoff(cutoff: int | None) -> int | None:
    return None if cutoff is None else check_int("cutoff", cutoff, lo=1)


def _unpack(state: State) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]:
    for key in ("clients", "since", "interval_sum", "interval_count", "round"):
        if key not in state or len(state[key]) != 1:
            raise ValueError(f"FedAU state lacks {key!r} (one array); has {sorted(state)}")
    clients = [str(c) for c in state["clients"][0]]
    arrays = [
        np.array(state[k][0], dtype=_I64) for k in ("since", "interval_sum", "interval_count")
    ]
    if any(a.shape != (len(clients),) for a in arrays):
        raise ValueError(f"FedAU state arrays do not match its {len(clients)} clients")
    return clients, arrays[0], arrays[1], arrays[2], int(state["round"][0])


def _pending(gap: np.ndarray, cutoff: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Intervals the cutoff recorded during ``gap`` absent rounds: (how many, leftover count)."""
    if cutoff is None:
        return np.zeros_like(gap), gap
    return gap // cutoff, gap % cutoff


def observe(
    state: State, participants: Collection[ClientId], cutoff: int | None = None
) -> tuple[State, dict[ClientId, float]]:
    """Advance one round in which exactly ``participants`` took part.

    Returns the new state and each participant's aggregation weight ``omega`` for this round.
    """
    cutoff = _check_cutoff(cutoff)
    names = list(participants)
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"clients {dup} take part twice in one round")
    clients, since, isum, icount, rnd = _unpack(state)
    index = {c: i for i, c in enumerate(clients)}
    new = sorted(c for c in names if c not in index)  # sorted: arrival order does not matter
    for c in new:
        index[c] = len(clients)
        clients.append(c)
    zeros = np.zeros(len(new), _I64)
    since, isum, icount = (np.concatenate([a, zeros]) for a in (since, isum, icount))

    weights: dict[ClientId, float] = {}
    for c in names:
        i = index[c]
        ticks, count = _pending(np.array(rnd - since[i]), cutoff)
        isum[i] += int(ticks) * (cutoff or 0)
        icount[i] += int(ticks)
        weights[c] = float(isum[i]) / float(icount[i]) if icount[i] > 0 else 1.0
        isum[i] += int(count) + 1
        icount[i] += 1
        since[i] = rnd + 1
    out: State = {
        "clients": [np.array(clients, dtype=str) if clients else np.zeros(0, dtype="<U1")],
        "since": [since],
        "interval_sum": [isum],
        "interval_count": [icount],
        "round": [np.array(rnd + 1, _I64)],
    }
    return out, weights


def estimates(state: State, cutoff: int | None = None) -> dict[ClientId, float]:
    """The weight each tracked client would get if it took part in the next round (~1/p)."""
    cutoff = _check_cutoff(cutoff)
    clients, since, isum, icount, rnd = _unpack(state)
    ticks, _ = _pending(rnd - since, cutoff)
    total, n = isum + ticks * (cutoff or 0), icount + ticks
    return {c: float(total[i]) / float(n[i]) if n[i] > 0 else 1.0 for i, c in enumerate(clients)}


@dataclass(frozen=True)
class FedAUReweight:
    """The :class:`~fedkit.aggregation.base.Reweight` stage: ``delta_n <- omega_n delta_n``.

    Compose it with ``sum_over(N)`` and ``sgd(lr)`` for FedAU (``make_aggregator("fedau")``).
    ``num_clients``, if given, bounds how many distinct clients may ever appear.
    """

    cutoff: int | None = None
    num_clients: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cutoff", _check_cutoff(self.cutoff))
        if self.num_clients is not None:
            object.__setattr__(
                self, "num_clients", check_int("num_clients", self.num_clients, lo=1)
            )

    def init(self) -> State:
        return init()

    def apply(self, state: State, updates: Sequence[Update]) -> tuple[State, list[Update]]:
        state, weights = observe(state, [u.client for u in updates], self.cutoff)
        seen = len(state["clients"][0])
        if self.num_clients is not None and seen > self.num_clients:
            raise ValueError(
                f"FedAU has seen {seen} distinct clients but num_clients={self.num_clients}"
            )
        return state, [_scaled(u, weights[u.client]) for u in updates]


def _scaled(u: Update, w: float) -> Update:
    delta = [cast_like(w * np.asarray(d, np.float64), np.asarray(d).dtype) for d in u.delta]
    return Update(u.client, delta, u.num_examples, u.metrics)
