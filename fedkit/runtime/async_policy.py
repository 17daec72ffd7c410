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

A task that settles without an update (lost, failed, refused as too stale) frees its client:
Buffered picks another client, Compass takes the client out of its group and gives it work again
at the next aggregation. After ``max_failures`` such settlements in a row with no accepted update,
a round closes as ``stalled`` (cancelling what is open) rather than spinning.

Resume: the policy's state (buffer, schedule, speed estimates) and the tasks in flight are not
checkpointed; a resumed run starts afresh from the checkpointed model, version and optimizer state.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from fedkit.aggregation.async_strategies import ASYNC_STRATEGIES, AsyncStep, make_async, make_step
from fedkit.aggregation.base import check_int
from fedkit.aggregation.fedcompass import Compass, CompassState, Decision
from fedkit.runtime.policy import Action, Aggregate, Await, Close, Send, View
from fedkit.types import Arrival, ClientId, Update

KEEP = Close("ok", keep_open=True)


@dataclass(frozen=True)
class _BufState:
    busy: frozenset[ClientId] = frozenset()  # clients with a task in flight
    buffer: tuple[Update, ...] = ()
    picks: int = 0  # clients picked this round (keys the next draw)
    failures: int = 0  # settlements without an update since the last accepted one


@dataclass(frozen=True)
class Buffered:
    """Keep ``concurrency`` clients training (None: every client); aggregate every ``k``
    accepted updates. FedAsync is ``k = 1``; FedBuff's paper uses ``k = 10``."""

    k: int = 1
    concurrency: int | None = None
    max_failures: int = 100

    def __post_init__(self) -> None:
        check_int("k", self.k, lo=1)
        if self.concurrency is not None:
            check_int("concurrency", self.concurrency, lo=1)
        check_int("max_failures", self.max_failures, lo=1)

    def _refill(self, view: View, st: _BufState) -> tuple[_BufState, list[Action]]:
        want = len(view.population) if self.concurrency is None else self.concurrency
        need = min(want, len(view.population)) - len(st.busy)
        if need <= 0:
            return st, []
        picked = view.sample(attempt=st.picks, exclude=tuple(st.busy), k=need)
        st = replace(st, busy=st.busy | set(picked), picks=st.picks + 1)
        return st, [Send("train", tuple(picked))] if picked else []

    def start(self, view: View, carried: Any = None) -> tuple[_BufState, list[Action]]:
        if isinstance(carried, _BufState):
            return replace(carried, picks=0), []  # a new round: draws are keyed by it
        return self._refill(view, _BufState())

    def on_arrival(
        self, view: View, state: _BufState, arrival: Arrival, update: Update | None
    ) -> tuple[_BufState, list[Action]]:
        st = replace(state, busy=state.busy - {arrival.task.client})
        if update is None:
            st = replace(st, failures=st.failures + 1)
            if st.failures >= self.max_failures:
                return st, [Close(f"stalled: {st.failures} tasks in a row brought no update")]
            return self._refill(view, st)
        st = replace(st, buffer=(*st.buffer, update), failures=0)
        if len(st.buffer) < self.k:
            return self._refill(view, st)
        ready = st.buffer
        st, sends = self._refill(view, replace(st, buffer=()))
        return st, [Aggregate(ready), *sends, KEEP]  # new work trains on the new model

    def on_deadline(self, view: View, state: _BufState) -> tuple[_BufState, list[Action]]:
        """Nothing is in flight (every task settled and no client could be picked)."""
        st, sends = self._refill(view, state)
        if sends:
            return st, sends
        return st, [Close("skipped: no client to train")]


@dataclass(frozen=True)
class _CompassState:
    scheduler: CompassState
    away: frozenset[ClientId] = frozenset()  # lost their task; rejoin at the next aggregation
    failures: int = 0


@dataclass(frozen=True)
class CompassPolicy:
    """The FedCompass scheduler as a round policy (see the module docstring)."""

    compass: Compass
    max_failures: int = 100

    def _actions(
        self, view: View, st: _CompassState, *ds: Decision
    ) -> tuple[_CompassState, list[Action]]:
        """Each decision's aggregation is its own version (the step recomputes staleness from
        the versions tasks carry); then every assignment trains on the newest model."""
        c = self.compass
        out: list[Action] = [Aggregate(tuple(u for u, _ in d.aggregate)) for d in ds if d.aggregate]
        assign = [a for d in ds for a in d.assign]
        if out:  # clients that lost their task come back with the new model
            sched = st.scheduler
            for cid in sorted(st.away & set(view.population)):
                sched, a = c.rejoin(sched, cid, view.now)
                assign.append(a)
            st = replace(st, scheduler=sched, away=st.away - set(view.population))
        if assign:
            out.append(Send("train", tuple(a.client for a in assign),
                            train={a.client: {"steps": a.steps} for a in assign}))
        timer = c.next_timer(st.scheduler)
        out.append(Await(None if timer is None else timer[0], cancel=False))
        if any(d.aggregate for d in ds):
            out.append(KEEP)
        return st, out

    def start(self, view: View, carried: Any = None) -> tuple[_CompassState, list[Action]]:
        if isinstance(carried, _CompassState):
            timer = self.compass.next_timer(carried.scheduler)
            return carried, [Await(None if timer is None else timer[0], cancel=False)]
        sched, d = self.compass.init(sorted(view.population), view.now)
        return self._actions(view, _CompassState(sched), d)

    def _due(self, view: View, st: _CompassState) -> tuple[_CompassState, list[Decision]]:
        """Fire group timers already past (a real clock can overshoot a deadline)."""
        out = []
        while (timer := self.compass.next_timer(st.scheduler)) is not None and timer[0] < view.now:
            sched, d = self.compass.on_timer(st.scheduler, timer[1], timer[0])
            st = replace(st, scheduler=sched)
            out.append(d)
        return st, out

    def on_arrival(
        self, view: View, state: _CompassState, arrival: Arrival, update: Update | None
    ) -> tuple[_CompassState, list[Action]]:
        st, due = self._due(view, state)
        cid = arrival.task.client
        if update is None:
            sched, d = self.compass.on_lost(st.scheduler, cid, view.now)
            st = replace(st, scheduler=sched, away=st.away | {cid}, failures=st.failures + 1)
            if st.failures >= self.max_failures:
                return st, [Close(f"stalled: {st.failures} tasks in a row brought no update")]
        else:
            steps = update.metrics.get("steps")
            sched, d = self.compass.on_arrival(
                st.scheduler, update, view.now, steps_done=None if steps is None else max(1, int(steps))
            )
            st = replace(st, scheduler=sched, failures=0)
        return self._actions(view, st, *due, d)

    def on_deadline(self, view: View, state: _CompassState) -> tuple[_CompassState, list[Action]]:
        timer = self.compass.next_timer(state.scheduler)
        if timer is None:  # nothing in flight and no group waiting
            return state, [Close("skipped: nothing in flight")]
        sched, d = self.compass.on_timer(state.scheduler, timer[1], max(view.now, timer[0]))
        return self._actions(view, replace(state, scheduler=sched), d)


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
    name: str, num_clients: int, **params: Any
) -> tuple[Buffered | CompassPolicy, AsyncStep]:
    """The round policy and server step of a named async strategy, e.g.
    ``make_async_policy("fedbuff", 100, k=10, concurrency=20)``. ``num_clients`` is the
    population (FedCompass's N unless given). Bad names or parameters raise ValueError."""
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
            return CompassPolicy(value), make_step(value)
        k = 1 if name == "fedasync" else value.k  # type: ignore[union-attr]
        conc = extra.get("concurrency")
        if conc is not None and conc > num_clients:
            raise ValueError(f"concurrency={conc} exceeds the {num_clients} clients")
        return Buffered(k=k, concurrency=conc), make_step(value)
    except ValueError as e:
        raise ValueError(f"async strategy {name!r}: {e}") from None


def is_async(name: str) -> bool:
    return name in ASYNC_POLICIES


