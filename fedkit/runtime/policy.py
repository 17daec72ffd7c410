"""Round policies: what the server does with arrivals, as a value.

The engine (fedkit/runtime/server.py) sends tasks, consumes arrivals in completion order and
asks the policy what to do next; the policy answers with actions. A policy holds no hidden
state: its state is a value passed in and returned, so a policy is a plain frozen dataclass.

    start(view, carried)                -> (state, actions)   a round begins (carried: see below)
    on_arrival(view, state, arr, upd)   -> (state, actions)   a task settled (upd: the accepted
                                                               Update, or None when refused/lost)
    on_deadline(view, state)            -> (state, actions)   the clock reached the Await deadline
                                                               (with ``Await(cancel=True)`` the
                                                               engine has cancelled the open tasks
                                                               and recorded them as missed)

Actions: :class:`Send` starts tasks, :class:`Await` sets the deadline of the wait for arrivals,
:class:`Aggregate` applies updates as one new model version, :class:`Drop` gives up some open
tasks, :class:`Close` ends the round (the engine evaluates, records and checkpoints). A round is
one metrics row, normally one aggregation (a relaying SequentialRound aggregates each client).

:class:`SyncRound` is the synchronous round (FedAvg's): sample, wait for all or the deadline,
aggregate, cancel the rest; :class:`SequentialRound` asks the sampled clients one after another
(split learning's sequential schemes);
:class:`~fedkit.runtime.secagg.SecAggRound` runs secure aggregation's four exchanges in one
round. Asynchronous policies
(``fedkit/runtime/async_policy.py``) answer the same three calls but close with
``Close(keep_open=True)``: their tasks stay in flight into the next round, and the next
``start`` gets the policy's state back as ``carried`` (None on a fresh start: the first round,
after a round that cancelled its tasks, or after a resume from a checkpoint, where in-flight
tasks are lost and the policy sends new ones). Arrivals of tasks sent in earlier rounds settle
into the current round, ``current version - task.version`` versions stale (refused beyond
``Acceptance.max_staleness``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np

from fedkit import rng as frng
from fedkit.types import Arrival, ClientId, Encoded, Update


@dataclass(frozen=True)
class Send:
    """Start one ``kind`` task per client on the current model. ``train``: per-client updates of
    the round's TrainConfig (FedCompass sets each client's local ``steps``). ``payloads``: each
    client's payload, made by the policy (a protocol message: secure aggregation's later
    stages) instead of the model."""

    kind: str
    clients: tuple[ClientId, ...]
    attempt: int = 0
    train: Mapping[ClientId, Mapping[str, Any]] = field(default_factory=dict)
    payloads: Mapping[ClientId, Encoded] | None = None


@dataclass(frozen=True)
class Await:
    """Wait for arrivals until ``deadline`` (link clock; None: until every open task settled).
    ``cancel``: at the deadline the engine cancels every open task first (a synchronous round's
    deadline); False makes it a timer that leaves the tasks in flight (FedCompass's groups)."""

    deadline: float | None
    cancel: bool = True


@dataclass(frozen=True)
class Aggregate:
    """Apply ``updates`` as one new model version. ``clients``: how many clients they stand for
    (secure aggregation hands one combined update of many; default: one each)."""

    updates: tuple[Update, ...]
    clients: int | None = None


@dataclass(frozen=True)
class Close:
    """End the round. ``keep_open``: tasks in flight stay open into the next round and the
    policy's state is handed to its next ``start`` (asynchronous policies); otherwise the
    engine cancels them (recorded as missed). ``metrics`` go into its metrics row (e.g. secure
    aggregation's stages)."""

    status: str = "ok"
    keep_open: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """Give up these clients' open tasks (recorded as missed) and leave the rest in flight: an
    asynchronous policy's per-task timeout."""

    clients: tuple[ClientId, ...]


Action = Send | Await | Aggregate | Close | Drop


@dataclass(frozen=True)
class Sampling:
    """How many clients a round asks: a fraction of the population or a count (at least ``min``).
    ``poisson``: each client takes part with probability ``fraction`` on its own coin, so the
    count varies (the sampling DP-FedAvg's accounting assumes); ``size`` is then its mean."""

    seed: int
    fraction: float | None = 1.0
    count: int | None = None
    min: int = 1
    poisson: bool = False

    def size(self, population: int) -> int:
        k = self.count if self.count is not None else round((self.fraction or 1.0) * population)
        return min(population, max(self.min, k, 1))


def sample_clients(
    sampling: Sampling,
    clients: Sequence[ClientId],
    rnd: int,
    attempt: int = 0,
    exclude: Sequence[ClientId] = (),
    k: int | None = None,
) -> list[ClientId]:
    """Seeded uniform sampling without replacement, returned in the population's order."""
    pool = sorted(set(clients) - set(exclude))
    if sampling.poisson and k is None:
        coins = frng.rng(sampling.seed, "sample-poisson", rnd, attempt).random(len(pool))
        return [c for c, u in zip(pool, coins, strict=True) if u < (sampling.fraction or 1.0)]
    n = len(pool)
    k = min(n, sampling.size(len(clients)) if k is None else k)
    if k <= 0:
        return []
    gen = frng.rng(sampling.seed, "sample", rnd, attempt)
    chosen = np.sort(gen.choice(n, size=k, replace=False))
    return [pool[i] for i in chosen]


@dataclass(frozen=True)
class View:
    """What a policy may look at: the round, the link's clock, the population, the model version."""

    round: int
    now: float
    population: tuple[ClientId, ...]
    version: int
    sampling: Sampling

    def sample(self, attempt: int = 0, exclude: Sequence[ClientId] = (), k: int | None = None) -> list[ClientId]:
        return sample_clients(self.sampling, self.population, self.round, attempt, exclude, k)


class Policy(Protocol):
    def start(self, view: View, carried: Any = None) -> tuple[Any, list[Action]]: ...

    def on_arrival(
        self, view: View, state: Any, arrival: Arrival, update: Update | None
    ) -> tuple[Any, list[Action]]: ...

    def on_deadline(self, view: View, state: Any) -> tuple[Any, list[Action]]: ...


@dataclass(frozen=True)
class _SyncState:
    attempt: int
    asked: tuple[ClientId, ...]
    waiting: frozenset[ClientId]
    updates: tuple[Update, ...] = field(default=())
    keep: int | None = None  # over-selection: aggregate once this many are accepted


@dataclass(frozen=True)
class SyncRound:
    """Sample, send, wait for every reply or the deadline, then aggregate (McMahan et al. 2017).

    ``min_replies`` accepted updates are needed to aggregate; with fewer, ``on_too_few: skip``
    ends the round without a new model and ``retry`` asks up to ``max_retries`` more samples.
    A retry keeps every update already accepted this round and asks only clients not yet asked
    this round, so no client's error-feedback memory moves for an update the server dropped.
    Updates are aggregated in the population's order, whatever order they arrived in.

    ``over_select`` > 1 samples ``ceil(over_select x K)`` clients for the round's K and
    aggregates the first K accepted, cancelling the rest (FedScale/Oort's over-commitment).
    """

    deadline_s: float | None = None
    min_replies: int = 1
    on_too_few: Literal["skip", "retry"] = "skip"
    max_retries: int = 2
    kind: str = "train"  # the task kind sent ("split_train": SplitFed V1)
    over_select: float = 1.0

    def _send(self, view: View, attempt: int, clients: Sequence[ClientId]) -> list[Action]:
        deadline = None if self.deadline_s is None else view.now + self.deadline_s
        return [Send(self.kind, tuple(clients), attempt), Await(deadline)]

    def start(self, view: View, carried: Any = None) -> tuple[_SyncState, list[Action]]:
        keep = None  # never carried: every round closes without keep_open
        if self.over_select > 1:
            keep = view.sampling.size(len(view.population))
            sampled = view.sample(0, k=math.ceil(self.over_select * keep - 1e-9))
        else:
            sampled = view.sample(0)
        state = _SyncState(0, tuple(sampled), frozenset(sampled), keep=keep)
        return state, self._send(view, 0, sampled)

    def on_arrival(
        self, view: View, state: _SyncState, arrival: Arrival, update: Update | None
    ) -> tuple[_SyncState, list[Action]]:
        state = replace(
            state,
            waiting=state.waiting - {arrival.task.client},
            updates=state.updates + ((update,) if update is not None else ()),
        )
        enough = state.keep is not None and len(state.updates) >= state.keep
        return (state, []) if state.waiting and not enough else self._settle(view, state)

    def on_deadline(self, view: View, state: _SyncState) -> tuple[_SyncState, list[Action]]:
        return self._settle(view, replace(state, waiting=frozenset()))

    def _settle(self, view: View, state: _SyncState) -> tuple[_SyncState, list[Action]]:
        got = len(state.updates)
        if got >= self.min_replies:
            order = {c: i for i, c in enumerate(sorted(view.population))}
            ups = tuple(sorted(state.updates, key=lambda u: order.get(u.client, math.inf)))
            return state, [Aggregate(ups), Close("ok")]
        if self.on_too_few == "retry" and state.attempt < self.max_retries:
            need = view.sampling.size(len(view.population))
            more = view.sample(state.attempt + 1, exclude=state.asked, k=need - got)
            if more:
                attempt = state.attempt + 1
                state = replace(state, attempt=attempt, asked=state.asked + tuple(more), waiting=frozenset(more))
                return state, self._send(view, attempt, more)
        return state, [Close(f"skipped: {got} replies < min_replies={self.min_replies}")]


@dataclass(frozen=True)
class _SeqState:
    order: tuple[ClientId, ...]
    next: int = 0
    updates: tuple[Update, ...] = field(default=())


@dataclass(frozen=True)
class SequentialRound:
    """The sampled clients one after another, in a seeded order, each task only after the last
    settled: split learning's sequential schemes (vanilla, SplitFed V2, U-shape, local loss),
    where one server part sees the clients' batches in turn, so in the same order in every mode.

    The order is ``rng(seed, "split-order", round).permutation`` of the sampled clients (in
    population order); ``deadline_s`` applies to each task. ``relay`` (vanilla SL): aggregate
    each accepted update as it arrives, so the next client starts from the last one's model;
    otherwise every accepted update is aggregated once at the end, in population order, if
    there are at least ``min_replies`` (else the round is skipped). A lost or refused client is
    passed over. ``min_replies`` does not apply with ``relay``.
    """

    kind: str = "train"
    deadline_s: float | None = None
    min_replies: int = 1
    relay: bool = False

    def _next(self, view: View, state: _SeqState) -> tuple[_SeqState, list[Action]]:
        if state.next < len(state.order):
            deadline = None if self.deadline_s is None else view.now + self.deadline_s
            client = state.order[state.next]
            return replace(state, next=state.next + 1), [Send(self.kind, (client,)), Await(deadline)]
        got = len(state.updates)
        if self.relay:  # each accepted update is already applied
            return state, [Close("ok" if got else "skipped: no client finished")]
        if got < self.min_replies:
            return state, [Close(f"skipped: {got} replies < min_replies={self.min_replies}")]
        order = {c: i for i, c in enumerate(sorted(view.population))}
        ups = tuple(sorted(state.updates, key=lambda u: order.get(u.client, math.inf)))
        return state, [Aggregate(ups), Close("ok")]

    def start(self, view: View, carried: Any = None) -> tuple[_SeqState, list[Action]]:
        sampled = view.sample(0)  # never carried: every round closes without keep_open
        perm = frng.rng(view.sampling.seed, "split-order", view.round).permutation(len(sampled))
        return self._next(view, _SeqState(tuple(sampled[i] for i in perm)))

    def on_arrival(
        self, view: View, state: _SeqState, arrival: Arrival, update: Update | None
    ) -> tuple[_SeqState, list[Action]]:
        if update is None:
            return self._next(view, state)
        state = replace(state, updates=state.updates + (update,))
        relayed: list[Action] = [Aggregate((update,))] if self.relay else []
        state, more = self._next(view, state)
        return state, relayed + more

    def on_deadline(self, view: View, state: _SeqState) -> tuple[_SeqState, list[Action]]:
        return self._next(view, state)
