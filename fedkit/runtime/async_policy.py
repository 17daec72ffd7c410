"""Asynchronous and semi-asynchronous round policies: tasks stay in flight across aggregations.

Each policy answers the engine's three calls (``fedkit/runtime/policy.py``) and ends every round
with one ``Aggregate`` and ``Close(keep_open=True)``: a round (a metrics row) is one new model
version, and the clients still training carry on into the next round, their updates arriving
``version - task.version`` versions stale. The maths of each step is an aggregation value
(``fedkit/aggregation/``) wrapped by :func:`~fedkit.aggregation.async_strategies.make_step`;
the policy only decides when to step and who trains next.

- :class:`Buffered` keeps ``concurrency`` clients busy; every accepted update goes into a buffer
  and the buffer is aggregated once it holds ``k``. With ``k = 1`` and the FedAsync step it is
  FedAsync (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", arXiv 1903.03934, 2019:
  the server mixes each arrival in at once); with the FedBuff step it is FedBuff (Nguyen et al.,
  "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022). A client that
  arrives is idle again and may be picked at once; idle clients are drawn uniformly, keyed by
  (seed, round, pick), so runs reproduce.
- :class:`CompassPolicy` drives the FedCompass scheduler (Li et al., "FedCompass: Efficient
  Cross-Silo Federated Learning on Heterogeneous Client Devices Using a Computing Power-Aware
  Scheduler", ICLR 2024): every client is kept busy with a number of local steps chosen so
  clients of similar speed arrive together (arrival groups); a group is aggregated when its last
  member arrives or its latest arrival time passes (a timer: ``Await(cancel=False)``). The steps
  travel as each task's ``TrainConfig.steps``; speeds are measured on the Link's clock (simulated
  in-process, real over gRPC) from the time a task took and the steps its reply reports.

A task that settles without an update (lost, failed, refused as too stale), or is still out after
``timeout_s`` (a scenario's ``server.deadline_s``: a device that dropped out never answers),
frees its client: Buffered picks another client, Compass takes the client out of its group and
gives it work again at the next aggregation. After ``max_failures`` such tasks in a row with no
accepted update, a round closes as ``stalled`` (cancelling what is open) rather than spinning.

Resume: the policy's state (buffer, schedule, speed estimates) and the tasks in flight are not
checkpointed; a resumed run starts afresh from the checkpointed model, version and optimizer state.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from fedkit import rng as frng
from fedkit.aggregation.async_strategies import ASYNC_STRATEGIES, AsyncStep, make_async, make_step
from fedkit.aggregation.base import check_int, check_real
from fedkit.aggregation.fedcompass import Compass, CompassState, Decision
from fedkit.runtime.policy import Action, Aggregate, Await, Close, Drop, Send, View
from fedkit.types import Arrival, ClientId, Update

KEEP = Close("ok", keep_open=True)
_EMPTY: Mapping[ClientId, float] = MappingProxyType({})


def _check(timeout_s: float | None, max_failures: int) -> None:
    if timeout_s is not None:
        check_real("timeout_s", timeout_s, lo=0.0, lo_open=True)
    check_int("max_failures", max_failures, lo=1)


def _without(busy: Mapping[ClientId, float], gone: Iterable[ClientId]) -> Mapping[ClientId, float]:
    out = dict(busy)
    for c in gone:
        out.pop(c, None)
    return MappingProxyType(out)


def _expired(busy: Mapping[ClientId, float], timeout_s: float | None, now: float) -> tuple[ClientId, ...]:
    if timeout_s is None:
        return ()
    return tuple(sorted(c for c, t in busy.items() if t + timeout_s <= now))


def _first_expiry(busy: Mapping[ClientId, float], timeout_s: float | None) -> float | None:
    return None if timeout_s is None or not busy else min(busy.values()) + timeout_s


def _draw(view: View, busy: Mapping[ClientId, float], k: int, pick: int) -> list[ClientId]:
    """``k`` idle clients uniformly without replacement, keyed by (seed, round, pick), in the
    population's order. Rejection sampling: O(k) while most clients are idle (FedBuff's usual
    concurrency), where a sort of the whole population would cost O(N log N) per arrival."""
    pop = view.population
    idle = len(pop) - len(busy)
    gen = frng.rng(view.sampling.seed, "async-pick", view.round, pick)
    if 4 * k > idle:  # a large share of the idle: draw from their list
        pool = [c for c in pop if c not in busy]
        return [pool[i] for i in sorted(gen.choice(len(pool), size=k, replace=False))]
    chosen: set[int] = set()
    while len(chosen) < k:
        i = int(gen.integers(len(pop)))
        if pop[i] not in busy:
            chosen.add(i)
    return [pop[i] for i in sorted(chosen)]


def _stalled(n: int) -> Close:
    return Close(f"stalled: {n} tasks in a row brought no update")


@dataclass(frozen=True)
class _BufState:
    busy: Mapping[ClientId, float] = field(default_factory=lambda: _EMPTY)  # clients with a task in flight -> when it was sent
    buffer: tuple[Update, ...] = ()
    picks: int = 0  # draws of clients this round (keys the next draw)
    failures: int = 0  # settlements without an update since the last accepted one


@dataclass(frozen=True)
class Buffered:
    """Keep ``concurrency`` clients training (None: every client); aggregate every ``k``
    accepted updates. FedAsync is ``k = 1``; FedBuff's paper uses ``k = 10``. A task out longer
    than ``timeout_s`` (link clock; None: no limit) is dropped and its client freed."""

    k: int = 1
    concurrency: int | None = None
    timeout_s: float | None = None
    max_failures: int = 100

    def __post_init__(self) -> None:
        check_int("k", self.k, lo=1)
        if self.concurrency is not None:
            check_int("concurrency", self.concurrency, lo=1)
        _check(self.timeout_s, self.max_failures)

    def _wait(self, st: _BufState) -> Await:
        return Await(_first_expiry(st.busy, self.timeout_s), cancel=False)

    def _refill(self, view: View, st: _BufState, before: list[Action]) -> tuple[_BufState, list[Action]]:
        """``before``, then tasks for idle clients up to the concurrency, then the wait."""
        pop = view.population
        want = len(pop) if self.concurrency is None else min(self.concurrency, len(pop))
        need = want - len(st.busy)
        out = list(before)
        if need > 0:
            if need == len(pop) - len(st.busy):  # every idle client: nothing to draw
                picked = [c for c in pop if c not in st.busy]
            else:
                picked = _draw(view, st.busy, need, st.picks)
                st = replace(st, picks=st.picks + 1)
            if picked:
                busy = dict(st.busy) | {c: view.now for c in picked}
                st = replace(st, busy=MappingProxyType(busy))
                out.append(Send("train", tuple(picked)))
        return st, [*out, self._wait(st)]

    def start(self, view: View, carried: Any = None) -> tuple[_BufState, list[Action]]:
        if isinstance(carried, _BufState):  # a new round: draws are keyed by it
            st = replace(carried, picks=0)
            return st, [self._wait(st)]
        return self._refill(view, _BufState(), [])

    def on_arrival(
        self, view: View, state: _BufState, arrival: Arrival, update: Update | None
    ) -> tuple[_BufState, list[Action]]:
        st = replace(state, busy=_without(state.busy, [arrival.task.client]))
        if update is None:
            st = replace(st, failures=st.failures + 1)
            if st.failures >= self.max_failures:
                return st, [_stalled(st.failures)]
            return self._refill(view, st, [])
        st = replace(st, buffer=(*st.buffer, update), failures=0)
        if len(st.buffer) < self.k:
            return self._refill(view, st, [])
        st, actions = self._refill(view, replace(st, buffer=()), [Aggregate(st.buffer)])
        return st, [*actions, KEEP]  # the new tasks train on the new model

    def on_deadline(self, view: View, state: _BufState) -> tuple[_BufState, list[Action]]:
        """Tasks timed out, or nothing more can arrive."""
        late = _expired(state.busy, self.timeout_s, view.now)
        if late:
            st = replace(state, busy=_without(state.busy, late), failures=state.failures + len(late))
            if st.failures >= self.max_failures:
                return st, [_stalled(st.failures)]
            return self._refill(view, st, [Drop(late)])
        st, actions = self._refill(view, state, [])
        if any(isinstance(a, Send) for a in actions):
            return st, actions
        # nothing in flight can arrive and nobody is free: start over next round
        return st, [Close("stalled: no task in flight can arrive")]


@dataclass(frozen=True)
class _CompassState:
    scheduler: CompassState
    busy: Mapping[ClientId, float] = field(default_factory=lambda: _EMPTY)  # clients with a task in flight -> when it was sent
    away: frozenset[ClientId] = frozenset()  # lost their task; rejoin at the next aggregation
    failures: int = 0


@dataclass(frozen=True)
class CompassPolicy:
    """The FedCompass scheduler as a round policy (see the module docstring). A task out longer
    than ``timeout_s`` is dropped: its client leaves its group until the next aggregation."""

    compass: Compass
    timeout_s: float | None = None
    max_failures: int = 100

    def __post_init__(self) -> None:
        _check(self.timeout_s, self.max_failures)

    def _wait(self, st: _CompassState) -> Await:
        timer = self.compass.next_timer(st.scheduler)
        times = [t for t in (None if timer is None else timer[0],
                             _first_expiry(st.busy, self.timeout_s)) if t is not None]
        return Await(min(times) if times else None, cancel=False)

    def _actions(
        self, view: View, st: _CompassState, ds: list[Decision], before: list[Action]
    ) -> tuple[_CompassState, list[Action]]:
        """Each decision's aggregation is its own version (the step recomputes staleness from
        the versions tasks carry); then every assignment trains on the newest model."""
        out: list[Action] = [*before]
        out += [Aggregate(tuple(u for u, _ in d.aggregate)) for d in ds if d.aggregate]
        assign = [a for d in ds for a in d.assign]
        aggregated = any(d.aggregate for d in ds)
        if aggregated and st.away:  # clients that lost their task come back with the new model
            sched, back = st.scheduler, sorted(st.away & set(view.population))
            for cid in back:
                sched, a = self.compass.rejoin(sched, cid, view.now)
                assign.append(a)
            st = replace(st, scheduler=sched, away=st.away - set(back))
        if assign:
            busy = dict(st.busy) | {a.client: view.now for a in assign}
            st = replace(st, busy=MappingProxyType(busy))
            out.append(Send("train", tuple(a.client for a in assign),
                            train={a.client: {"steps": a.steps} for a in assign}))
        out.append(self._wait(st))
        return st, [*out, KEEP] if aggregated else out

    def start(self, view: View, carried: Any = None) -> tuple[_CompassState, list[Action]]:
        if isinstance(carried, _CompassState):
            return carried, [self._wait(carried)]
        sched, d = self.compass.init(sorted(view.population), view.now)
        return self._actions(view, _CompassState(sched), [d], [])

    def _due(self, st: _CompassState, now: float, inclusive: bool) -> tuple[_CompassState, list[Decision]]:
        """Fire the group timers already due (a real clock can overshoot a deadline)."""
        out = []
        while (timer := self.compass.next_timer(st.scheduler)) is not None and (
            timer[0] <= now if inclusive else timer[0] < now
        ):
            sched, d = self.compass.on_timer(st.scheduler, timer[1], timer[0])
            st = replace(st, scheduler=sched)
            out.append(d)
        return st, out

    def _lost(self, st: _CompassState, cids: Iterable[ClientId], now: float) -> tuple[_CompassState, list[Decision]]:
        out = []
        for cid in cids:
            sched, d = self.compass.on_lost(st.scheduler, cid, now)
            st = replace(st, scheduler=sched, away=st.away | {cid}, failures=st.failures + 1)
            out.append(d)
        return st, out

    def on_arrival(
        self, view: View, state: _CompassState, arrival: Arrival, update: Update | None
    ) -> tuple[_CompassState, list[Action]]:
        cid = arrival.task.client
        st, ds = self._due(replace(state, busy=_without(state.busy, [cid])), view.now, inclusive=False)
        if update is None:
            st, lost = self._lost(st, [cid], view.now)
            ds += lost
            if st.failures >= self.max_failures:
                return st, [_stalled(st.failures)]
        else:
            steps = update.metrics.get("steps")
            done = None if steps is None or not math.isfinite(steps) else max(1, int(steps))
            sched, d = self.compass.on_arrival(st.scheduler, update, view.now, steps_done=done)
            st = replace(st, scheduler=sched, failures=0)
            ds.append(d)
        return self._actions(view, st, ds, [])

    def on_deadline(self, view: View, state: _CompassState) -> tuple[_CompassState, list[Action]]:
        """A group's timer or a task's timeout came due (or nothing more can arrive)."""
        late = _expired(state.busy, self.timeout_s, view.now)
        st, ds = self._lost(replace(state, busy=_without(state.busy, late)), late, view.now)
        if st.failures >= self.max_failures:
            return st, [_stalled(st.failures)]
        timer = self.compass.next_timer(st.scheduler)
        if not late and timer is not None and timer[0] > view.now and not st.busy:
            view_now = timer[0]  # nothing in flight: the link's clock did not move; fire it
        else:
            view_now = view.now
        st, due = self._due(st, view_now, inclusive=True)
        ds += due
        if not ds and not st.busy:
            return st, [Close("stalled: no task in flight can arrive")]
        return self._actions(view, st, ds, [Drop(late)] if late else [])


# --- by name, from a scenario's strategy section ----------------------------------------------

_POLICY_PARAMS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "fedasync": MappingProxyType({"concurrency": None}),
    "fedbuff": MappingProxyType({"concurrency": None}),
    "fedcompass": MappingProxyType({}),
})

ASYNC_POLICIES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    name: MappingProxyType({**ASYNC_STRATEGIES[name], **extra}) for name, extra in _POLICY_PARAMS.items()
})
"""Async strategy name -> every parameter of its scenario section, with defaults."""


def make_async_policy(
    name: str, num_clients: int, timeout_s: float | None = None, **params: Any
) -> tuple[Buffered | CompassPolicy, AsyncStep]:
    """The round policy and server step of a named async strategy, e.g.
    ``make_async_policy("fedbuff", 100, k=10, concurrency=20)``. ``num_clients`` is the
    population (FedCompass's N unless given); ``timeout_s`` the per-task timeout (a scenario's
    ``server.deadline_s``). Bad names or parameters raise ValueError."""
    if name not in ASYNC_POLICIES:
        close = difflib.get_close_matches(name, list(ASYNC_POLICIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown async strategy {name!r}{hint} (known: {', '.join(ASYNC_POLICIES)})")
    extra = {k: params.pop(k) for k in list(params) if k in _POLICY_PARAMS[name]}
    if name == "fedcompass":
        params.setdefault("num_clients", num_clients)
    value = make_async(name, **params)  # names unknown parameters, checks values
    try:
        if isinstance(value, Compass):
            return CompassPolicy(value, timeout_s), make_step(value)
        k = 1 if name == "fedasync" else value.k  # type: ignore[union-attr]
        conc = extra.get("concurrency")
        if conc is not None and conc > num_clients:
            raise ValueError(f"concurrency={conc} exceeds the {num_clients} clients")
        return Buffered(k=k, concurrency=conc, timeout_s=timeout_s), make_step(value)
    except ValueError as e:
        raise ValueError(f"async strategy {name!r}: {e}") from None


def is_async(name: str) -> bool:
    return name in ASYNC_POLICIES


