"""Named asynchronous strategies: the server-side values a round policy is built around.

Unlike :func:`~fedkit.aggregation.strategies.make_aggregator`, these are not one synchronous
step per round. Each returns a configuration value with pure methods, state in first:

- ``fedasync`` -> :class:`~fedkit.aggregation.fedasync.FedAsync`:
  ``init() -> state``; ``apply(state, params, delta, version) -> (state, params)`` per arrival.
- ``fedbuff`` -> :class:`~fedkit.aggregation.fedbuff.FedBuff`: ``init(params) -> state``;
  ``on_update(state, params, delta, version, weight) -> (state, params, flushed)``.
- ``fedcompass`` -> :class:`~fedkit.aggregation.fedcompass.Compass`:
  ``init(clients, now) -> (state, decision)``; ``on_arrival(state, update, now, steps_done,
  elapsed) -> (state, decision)``; ``on_timer(state, group, now)``; ``next_timer(state)``;
  ``aggregate(state, params, decision.aggregate) -> params``.

The round engine calls an aggregator's ``init(params)`` and ``step(state, params, updates)``
once per new model version; :func:`make_step` wraps each value in that shape (``FedAsyncStep``,
``FedBuffStep``, ``CompassStep``), its state a checkpointable dict of arrays that counts the
versions it made, so each update's staleness is ``that count - update.version``. The policies
that decide *when* to step and who trains next live in ``fedkit/runtime/async_policy.py``.

The ``staleness`` parameter names a function of :mod:`fedkit.aggregation.staleness`
(``constant``, ``polynomial``, ``hinge``) and ``staleness_params`` its arguments, so a YAML
strategy section stays plain data. FedBuff's ``server_opt`` names a server optimizer
(``sgd``, ``momentum``, ``adam``, ``yogi``, ``adagrad``) with ``server_opt_params``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from fedkit.aggregation import server_opt as so
from fedkit.aggregation.base import State
from fedkit.aggregation.fedasync import FedAsync, FedAsyncState, mix_delta
from fedkit.aggregation.fedbuff import FedBuff, FedBuffState
from fedkit.aggregation.fedcompass import Compass
from fedkit.aggregation.staleness import make_staleness, staleness
from fedkit.types import Params, Update

_SERVER_OPTS: dict[str, Callable[..., Any]] = {
    "sgd": so.sgd,
    "momentum": so.momentum,
    "adam": so.adam,
    "yogi": so.yogi,
    "adagrad": so.adagrad,
}


def _fedasync(alpha: float, staleness: str, staleness_params: Mapping[str, Any]) -> FedAsync:
    return FedAsync(alpha, make_staleness(staleness, **staleness_params))


def _fedbuff(
    k: int,
    lr: float,
    server_opt: str,
    server_opt_params: Mapping[str, Any],
    staleness: str,
    staleness_params: Mapping[str, Any],
) -> FedBuff:
    if server_opt not in _SERVER_OPTS:
        raise ValueError(f"unknown server_opt {server_opt!r} (known: {', '.join(_SERVER_OPTS)})")
    opt = _SERVER_OPTS[server_opt](lr=lr, **server_opt_params)
    return FedBuff(k, opt, make_staleness(staleness, **staleness_params))


def _fedcompass(
    min_steps: int,
    max_steps: int,
    speed_momentum: float,
    latest_time_factor: float,
    alpha: float,
    staleness: str,
    staleness_params: Mapping[str, Any],
    num_clients: int | None,
) -> Compass:
    s = make_staleness(staleness, **staleness_params)
    return Compass(min_steps, max_steps, speed_momentum, latest_time_factor, alpha, s, num_clients)


_POLY = {"staleness": "polynomial", "staleness_params": MappingProxyType({"a": 0.5})}

_SPECS: dict[str, tuple[Mapping[str, Any], Callable[..., Any]]] = {
    "fedasync": ({"alpha": 0.9, **_POLY}, _fedasync),
    "fedbuff": (
        {
            "k": 10,
            "lr": 1.0,
            "server_opt": "sgd",
            "server_opt_params": MappingProxyType({}),
            **_POLY,
        },
        _fedbuff,
    ),
    "fedcompass": (
        {
            "min_steps": 20,
            "max_steps": 100,
            "speed_momentum": 0.9,
            "latest_time_factor": 1.5,
            "alpha": 0.9,
            **_POLY,
            "num_clients": None,
        },
        _fedcompass,
    ),
}

ASYNC_STRATEGIES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(dict(defaults)) for name, (defaults, _) in _SPECS.items()}
)
"""Async strategy name -> its parameters and their defaults (read-only)."""


def make_async(name: str, **params: Any) -> FedAsync | FedBuff | Compass:
    """Build a named async strategy, e.g. ``make_async("fedbuff", k=5, lr=0.5)``.

    Unknown names or parameters and invalid values raise ValueError saying what is allowed."""
    if name not in _SPECS:
        close = difflib.get_close_matches(name, list(_SPECS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown async strategy {name!r}{hint} (known: {', '.join(_SPECS)})")
    defaults, build = _SPECS[name]
    for key in params:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"async strategy {name!r} has no parameter {key!r}{hint} "
                f"(allowed: {', '.join(defaults)})"
            )
    try:
        return build(**{**defaults, **params})
    except (ValueError, TypeError) as e:
        raise ValueError(f"async strategy {name!r}: {e}") from None


# --- the engine's view: one step = one new model version ---------------------------------------

VERSION_KEY = "async_version"
"""State key of the number of versions a step has made (the engine's version, checkpointed)."""


def _version(state: State) -> int:
    if VERSION_KEY not in state:
        raise ValueError(f"async aggregator state lacks {VERSION_KEY!r}; has {sorted(state)}")
    return int(state[VERSION_KEY][0])


def _bumped(state: State, version: int) -> State:
    return {**state, VERSION_KEY: [np.array(version + 1, np.int64)]}


def _need(updates: Sequence[Update], what: str) -> None:
    if not updates:
        raise ValueError(f"{what}: a step needs at least one update")


@dataclass(frozen=True)
class FedAsyncStep:
    """FedAsync's server step: ``x <- x + alpha s(tau_i) delta_i`` for each update in turn (the
    delta form of :mod:`~fedkit.aggregation.fedasync`); ``tau_i`` counts from this step's
    version. Its policy hands it one update per step."""

    fedasync: FedAsync

    def init(self, params: Params) -> State:
        return {VERSION_KEY: [np.array(0, np.int64)]}

    def step(self, state: State, params: Params, updates: Sequence[Update]) -> tuple[State, Params]:
        _need(updates, "FedAsync")
        v = _version(state)
        for u in updates:
            a = self.fedasync.weight(FedAsyncState(v), u.version)
            params = mix_delta(params, u.delta, a)
        return _bumped(state, v), params


@dataclass(frozen=True)
class FedBuffStep:
    """FedBuff's flush: the policy hands it the K buffered updates; each is discounted by
    ``s(tau_i)`` and the server optimizer steps along their mean (:class:`FedBuff`)."""

    fedbuff: FedBuff

    def init(self, params: Params) -> State:
        opt = self.fedbuff.init(params).opt
        if VERSION_KEY in opt:
            raise ValueError(f"server optimizer state uses the reserved key {VERSION_KEY!r}")
        return {**opt, VERSION_KEY: [np.array(0, np.int64)]}

    def step(self, state: State, params: Params, updates: Sequence[Update]) -> tuple[State, Params]:
        _need(updates, "FedBuff")
        v = _version(state)
        buf = FedBuffState(opt={k: a for k, a in state.items() if k != VERSION_KEY}, version=v)
        for u in updates:
            buf = self.fedbuff.add(buf, u.delta, staleness=staleness(v, u.version), client=u.client)
        buf, params = self.fedbuff.flush(buf, params)
        return _bumped(buf.opt, v), params


@dataclass(frozen=True)
class CompassStep:
    """FedCompass's group aggregation: ``x + sum_i alpha s(tau_i) / N delta_i`` (:class:`Compass`;
    ``num_clients`` must be set)."""

    compass: Compass

    def __post_init__(self) -> None:
        if self.compass.num_clients is None:
            raise ValueError("CompassStep needs a Compass with num_clients (the N in alpha / N)")

    def init(self, params: Params) -> State:
        return {VERSION_KEY: [np.array(0, np.int64)]}

    def step(self, state: State, params: Params, updates: Sequence[Update]) -> tuple[State, Params]:
        _need(updates, "FedCompass")
        v = _version(state)
        items = [(u, staleness(v, u.version)) for u in updates]
        return _bumped(state, v), self.compass.aggregate(None, params, items)


AsyncStep = FedAsyncStep | FedBuffStep | CompassStep


def make_step(value: FedAsync | FedBuff | Compass) -> AsyncStep:
    """The engine-shaped step of an async strategy value (see the module docstring)."""
    if isinstance(value, FedAsync):
        return FedAsyncStep(value)
    if isinstance(value, FedBuff):
        return FedBuffStep(value)
    if isinstance(value, Compass):
        return CompassStep(value)
    raise TypeError(f"not an async strategy value: {value!r}")
