"""A strategy of your own, by import path: ``strategy: {name: "examples.custom_strategy:make"}``.

A strategy factory takes the scenario's strategy parameters and returns an aggregator: any value
with ``init(params) -> state`` and ``step(state, params, updates) -> (state, params)``. Here it is
built from fedkit's parts: a trimmed mean of the client deltas moved along with server momentum.
"""

from __future__ import annotations

from fedkit.aggregation import Aggregator, momentum, trimmed_mean


def make(beta: float = 0.1, lr: float = 1.0, momentum_: float = 0.5) -> Aggregator:
    return Aggregator(trimmed_mean(beta), momentum(lr=lr, momentum=momentum_))
