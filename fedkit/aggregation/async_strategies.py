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

The ``staleness`` parameter names a function of :mod:`fedkit.aggregation.staleness`
(``constant``, ``polynomial``, ``hinge``) and ``staleness_params`` its arguments, so a YAML
strategy section stays plain data. FedBuff's ``server_opt`` names a server optimizer
(``sgd``, ``momentum``, ``adam``, ``yogi``, ``adagrad``) with ``server_opt_params``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from fedkit.aggregation import server_opt as so
from fedkit.aggregation.fedasync import FedAsync
from fedkit.aggregation.fedbuff import FedBuff
from fedkit.aggregation.fedcompass import Compass
from fedkit.aggregation.staleness import make_staleness

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
