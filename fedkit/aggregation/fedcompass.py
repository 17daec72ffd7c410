"""FedCompass: a computing-power-aware scheduler that makes clients of similar speed arrive
together, so the server aggregates groups semi-asynchronously.

Reference: Li, Chaturvedi, Kim, Fan, Bhardwaj, Vatsavai, Zhou, Taylor, Chen, Huerta, Bui,
"FedCompass: Efficient Cross-Silo Federated Learning on Heterogeneous Client Devices Using a
Computing Power-Aware Scheduler", ICLR 2024 (arXiv 2309.14675); the rules below follow the
reference scheduler ``APPFL/APPFL:src/appfl/algorithm/scheduler/compass_scheduler.py`` and
aggregator ``fedcompass_aggregator.py``.

The server keeps, per client, a speed estimate (seconds per local step) smoothed as
``speed <- (1 - m) speed + m observed`` with ``m = speed_momentum = 0.9`` (the reference
weighs the new observation by m), and a set of *arrival groups*, each with an expected arrival
time and a latest arrival time ``start + steps * speed * latest_time_factor``. When a client
has to be given work:

- join: for every open group, ``steps = floor((expected - now) / speed)``; among groups where
  ``min_steps <= steps <= max_steps`` take the one with the most steps (ties: the newer group);
- else create a group: for every open group not yet past its latest time, aim at
  ``latest + fastest member's speed * max_steps``; take the largest such ``steps <= max_steps``,
  raised to ``min_steps``; with no candidate, ``max_steps``. The group expects the client at
  ``now + steps * speed``.

Arrivals: a client's first task (``max_steps`` for everyone at start) is aggregated alone, at
once. Later, an arrival by its group's latest time is buffered with the group; when the last
member arrives -- or :meth:`Compass.on_timer` fires at the latest time -- the group's buffer plus
the general buffer of late arrivals is aggregated as one step (a client in both counts once,
with its newer update), and its arrived members are given new work fastest first. A late arrival goes to the general buffer and gets new work at once.

Aggregation (delta form): ``x <- x + sum_i alpha s(tau_i) / N * delta_i``; ``N`` is the number
of clients, ``s`` polynomial with ``a = 0.5``, ``alpha = 0.9`` as in the reference config.

Everything is a pure function of the state and the (simulated or real) time the caller passes,
so the same scheduler runs on the event engine's clock and on the wall clock. Ties in time are
the caller's to order; given an order, every decision here is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from fedkit.aggregation.base import cast_like, check_int, check_like, check_real
from fedkit.aggregation.staleness import Polynomial, StalenessFn, staleness
from fedkit.types import ClientId, Params, Update

_F64 = np.float64

Pending = tuple[tuple[Update, int], ...]
"""Buffered updates, each with the model version it trained on."""


@dataclass(frozen=True)
class ClientInfo:
    """What the scheduler knows of one client and its current task."""

    speed: float | None  # seconds per local step; None before the first arrival
    steps: int  # local steps of the current task
    start: float  # when the current task was assigned
    version: int  # global model version the current task trains on
    group: int | None  # arrival group of the current task (None: the first task)


@dataclass(frozen=True)
class Group:
    """An arrival group: clients expected to arrive together at ``expected``, by ``latest``."""

    pending: tuple[ClientId, ...]
    arrived: tuple[ClientId, ...]
    expected: float
    latest: float
    closed: bool = False  # aggregated (complete or timed out): later arrivals are late


@dataclass(frozen=True)
class CompassState:
    clients: Mapping[ClientId, ClientInfo]
    groups: Mapping[int, Group] = field(default_factory=dict)
    buffers: Mapping[int, Pending] = field(default_factory=dict)  # group id -> on-time arrivals
    general: Pending = ()  # late arrivals, merged into the next group aggregation
    next_group: int = 0
    version: int = 0


@dataclass(frozen=True)
class Assignment:
    """Start a task: train ``steps`` local steps on global version ``version`` (the current)."""

    client: ClientId
    steps: int
    group: int | None
    version: int


@dataclass(frozen=True)
class Decision:
    """What the caller does now, in order: if ``aggregate`` is non-empty, apply it with
    :meth:`Compass.aggregate` (the scheduler's version already counts it); then start the
    ``assign`` tasks on the resulting model."""

    aggregate: tuple[tuple[Update, int], ...] = ()  # (update, staleness)
    assign: tuple[Assignment, ...] = ()


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


@dataclass(frozen=True)
class Compass:
    """FedCompass configuration (defaults: the reference implementation's)."""

    min_steps: int = 20
    max_steps: int = 100
    speed_momentum: float = 0.9
    latest_time_factor: float = 1.5
    alpha: float = 0.9
    staleness: StalenessFn = Polynomial(0.5)
    num_clients: int | None = None  # N in alpha / N; None: the clients given to init

    def __post_init__(self) -> None:
        fix = object.__setattr__
        fix(self, "min_steps", check_int("min_steps", self.min_steps, lo=1))
        fix(self, "max_steps", check_int("max_steps", self.max_steps, lo=1))
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps={self.min_steps} exceeds max_steps={self.max_steps}")
        fix(
            self,
            "speed_momentum",
            check_real("speed_momentum", self.speed_momentum, lo=0.0, hi=1.0, lo_open=True),
        )
        fix(
            self,
            "latest_time_factor",
            check_real("latest_time_factor", self.latest_time_factor, lo=1.0),
        )
        fix(self, "alpha", check_real("alpha", self.alpha, lo=0.0, hi=1.0, lo_open=True))
        if self.num_clients is not None:
            fix(self, "num_clients", check_int("num_clients", self.num_clients, lo=1))
        if not callable(self.staleness):
            raise ValueError(f"staleness must be a staleness function, got {self.staleness!r}")

    # --- life cycle ----------------------------------------------------------------------

    def init(self, clients: Sequence[ClientId], now: float = 0.0) -> tuple[CompassState, Decision]:
        """Every client starts a ``max_steps`` task on version 0 (no group yet)."""
        if len(clients) == 0 or len(set(clients)) != len(clients):
            raise ValueError("FedCompass needs a non-empty list of distinct clients")
        info = {c: ClientInfo(None, self.max_steps, float(now), 0, None) for c in clients}
        assign = tuple(Assignment(c, self.max_steps, None, 0) for c in clients)
        return CompassState(clients=_frozen(info)), Decision(assign=assign)

    def on_arrival(
        self,
        state: CompassState,
        update: Update,
        now: float,
        steps_done: int | None = None,
        elapsed: float | None = None,
    ) -> tuple[CompassState, Decision]:
        """A client's reply arrived at ``now``. ``steps_done`` defaults to the steps assigned,
        ``elapsed`` (the time the task took) to ``now - start``; the speed estimate
        is updated with ``elapsed / steps_done``."""
        c = update.client
        if c not in state.clients:
            raise ValueError(f"client {c!r} is not one FedCompass scheduled")
        info = state.clients[c]
        steps = info.steps if steps_done is None else check_int("steps_done", steps_done, lo=1)
        took = now - info.start if elapsed is None else elapsed
        took = check_real("elapsed", took, lo=0.0, lo_open=True)
        observed = took / steps
        m = self.speed_momentum
        speed = observed if info.speed is None else (1.0 - m) * info.speed + m * observed
        info = replace(info, speed=speed)
        for gid, g in state.groups.items():
            if not g.closed and g.arrived and now > g.latest:
                raise ValueError(
                    f"group {gid} passed its latest arrival time {g.latest:g} before now={now:g}: "
                    "call on_timer for it first"
                )
        state = _with_client(state, c, info)

        if info.group is None:  # first task: aggregated alone, at once
            item = (update, staleness(state.version, info.version))
            state = replace(state, version=state.version + 1)
            state, a = self._assign(state, c, now)
            return state, Decision(aggregate=(item,), assign=(a,))

        gid = info.group
        g = state.groups[gid]
        pending = tuple(x for x in g.pending if x != c)
        if g.closed or now > g.latest:  # late: general buffer, new work at once
            groups = dict(state.groups)
            if pending:
                groups[gid] = replace(g, pending=pending)
            else:
                del groups[gid]
            general = (*state.general, (update, info.version))
            state = replace(state, groups=_frozen(groups), general=general)
            state, a = self._assign(state, c, now)
            return state, Decision(assign=(a,))

        groups = dict(state.groups)
        groups[gid] = replace(g, pending=pending, arrived=(*g.arrived, c))
        buffers = dict(state.buffers)
        buffers[gid] = (*buffers.get(gid, ()), (update, info.version))
        state = replace(state, groups=_frozen(groups), buffers=_frozen(buffers))
        if pending:
            return state, Decision()
        return self._aggregate_group(state, gid, now)

    def on_timer(
        self, state: CompassState, group: int, now: float
    ) -> tuple[CompassState, Decision]:
        """Group ``group``'s latest arrival time passed: aggregate whoever arrived."""
        g = state.groups.get(group)
        if g is None or g.closed:
            return state, Decision()
        if not g.arrived:  # nobody came: every member is now late
            groups = dict(state.groups)
            groups[group] = replace(g, closed=True)
            return replace(state, groups=_frozen(groups)), Decision()
        return self._aggregate_group(state, group, now)

    def next_timer(self, state: CompassState) -> tuple[float, int] | None:
        """``(time, group)`` of the next open group's latest arrival time, or None."""
        open_ = [(g.latest, gid) for gid, g in state.groups.items() if not g.closed]
        return min(open_) if open_ else None

    def on_lost(
        self, state: CompassState, client: ClientId, now: float
    ) -> tuple[CompassState, Decision]:
        """``client``'s task will not arrive (it failed, was refused or disconnected): it leaves
        its group without new work (bring it back with :meth:`rejoin`). If it was the group's
        last pending member, the group is aggregated now as if it had completed."""
        if client not in state.clients:
            raise ValueError(f"client {client!r} is not one FedCompass scheduled")
        info = state.clients[client]
        state = _with_client(state, client, replace(info, group=None, steps=0))
        gid = info.group
        if gid is None or gid not in state.groups:
            return state, Decision()
        g = state.groups[gid]
        groups = dict(state.groups)
        groups[gid] = g = replace(g, pending=tuple(x for x in g.pending if x != client))
        state = replace(state, groups=_frozen(groups))
        if g.pending:
            return state, Decision()
        if g.arrived and not g.closed:
            return self._aggregate_group(state, gid, now)
        del groups[gid]
        return replace(state, groups=_frozen(groups)), Decision()

    def rejoin(self, state: CompassState, client: ClientId, now: float) -> tuple[CompassState, Assignment]:
        """Give work again to a client that :meth:`on_lost` took out: into a group if its speed is
        known, else a first task of ``max_steps`` (aggregated alone on arrival)."""
        info = state.clients.get(client)
        if info is None:
            raise ValueError(f"client {client!r} is not one FedCompass scheduled")
        if info.speed is not None:
            return self._assign(state, client, now)
        info = ClientInfo(None, self.max_steps, float(now), state.version, None)
        return _with_client(state, client, info), Assignment(client, self.max_steps, None, state.version)

    def aggregate(
        self, state: CompassState | None, params: Params, items: Sequence[tuple[Update, int]]
    ) -> Params:
        """``x + sum_i alpha s(tau_i) / N delta_i`` for ``items`` of ``(update, staleness)``;
        N is ``num_clients``, else the number of clients ``state`` schedules."""
        if self.num_clients is None and state is None:
            raise ValueError("Compass.aggregate needs num_clients or the scheduler state")
        n = self.num_clients if self.num_clients is not None else len(state.clients)  # type: ignore[union-attr]
        acc = [np.asarray(p, _F64).copy() for p in params]
        for u, tau in items:
            check_like(u.delta, params, what=f"delta from client {u.client!r}")
            a = self.alpha * self.staleness(tau) / n
            for k, d in enumerate(u.delta):
                acc[k] += a * np.asarray(d, _F64)
        return [cast_like(a, np.asarray(p).dtype) for a, p in zip(acc, params, strict=True)]

    # --- internals -----------------------------------------------------------------------

    def _aggregate_group(
        self, state: CompassState, gid: int, now: float
    ) -> tuple[CompassState, Decision]:
        g = state.groups[gid]
        # a client both late (general) and on time (group) counts once, with its newer update,
        # as the reference's dict merge does
        merged = {u.client: (u, v) for u, v in (*state.general, *state.buffers.get(gid, ()))}
        items = tuple((u, staleness(state.version, v)) for u, v in merged.values())
        version = state.version + 1
        buffers = {k: v for k, v in state.buffers.items() if k != gid}
        groups = dict(state.groups)
        groups[gid] = replace(g, closed=True)
        clients = dict(state.clients)
        for c in g.arrived:
            clients[c] = replace(clients[c], version=version)
        state = replace(
            state,
            clients=_frozen(clients),
            groups=_frozen(groups),
            buffers=_frozen(buffers),
            general=(),
            version=version,
        )
        order = sorted(g.arrived, key=lambda c: _speed(state.clients[c]))  # stable: fastest first
        assign = []
        for c in order:
            state, a = self._assign(state, c, now)
            assign.append(a)
        if not g.pending:
            groups = dict(state.groups)
            del groups[gid]
            state = replace(state, groups=_frozen(groups))
        return state, Decision(aggregate=items, assign=tuple(assign))

    def _assign(
        self, state: CompassState, c: ClientId, now: float
    ) -> tuple[CompassState, Assignment]:
        speed = _speed(state.clients[c])
        gid, steps = self._join(state, speed, now)
        groups = dict(state.groups)
        next_group = state.next_group
        if gid is None:
            steps = self._new_steps(state, speed, now)
            gid, next_group = next_group, next_group + 1
            span = steps * speed
            groups[gid] = Group((c,), (), now + span, now + span * self.latest_time_factor)
        else:
            groups[gid] = replace(groups[gid], pending=(*groups[gid].pending, c))
        info = replace(
            state.clients[c], steps=steps, start=float(now), version=state.version, group=gid
        )
        state = replace(state, groups=_frozen(groups), next_group=next_group)
        state = _with_client(state, c, info)
        return state, Assignment(c, steps, gid, state.version)

    def _join(self, state: CompassState, speed: float, now: float) -> tuple[int | None, int]:
        best, best_steps = None, -1
        for gid in sorted(state.groups):
            g = state.groups[gid]
            if g.closed:
                continue
            steps = math.floor((g.expected - now) / speed)
            if self.min_steps <= steps <= self.max_steps and steps >= best_steps:
                best, best_steps = gid, steps
        return best, best_steps

    def _new_steps(self, state: CompassState, speed: float, now: float) -> int:
        best = -1
        for gid in sorted(state.groups):
            g = state.groups[gid]
            if g.closed or not now < g.latest:
                continue
            fastest = min(_speed(state.clients[m]) for m in (*g.pending, *g.arrived))
            steps = math.floor((g.latest + fastest * self.max_steps - now) / speed)
            if steps <= self.max_steps:
                best = max(best, steps)
        if best < 0:
            return self.max_steps
        return max(best, self.min_steps)


def _speed(info: ClientInfo) -> float:
    if info.speed is None:
        raise ValueError("client has no speed estimate yet (it never arrived)")
    return info.speed


def _with_client(state: CompassState, c: ClientId, info: ClientInfo) -> CompassState:
    clients = dict(state.clients)
    clients[c] = info
    return replace(state, clients=_frozen(clients))
