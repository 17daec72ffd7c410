"""Data-dependent checks of a scenario, as far as they go without training.

``fedkit validate`` runs the schema (fedkit/scenario/schema.py) and then :func:`check_data`:
the dataset loads (files exist, keys, lengths, NaN, label range are the loaders' checks), the
partition can be made (Dirichlet alpha, shard counts) and leaves no client empty, and robust
aggregators' assumptions hold for the clients a round samples (Krum needs n > 2f + 2, Bulyan
n >= 4f + 3). Each problem is one line naming the section.
"""

from __future__ import annotations

import math
from typing import Any

from fedkit.scenario.schema import Scenario

# strategy -> (minimum updates as a function of f, the rule as text)
_NEEDS = {
    "krum": (lambda f: 2 * f + 3, "n > 2f + 2"),
    "multikrum": (lambda f: 2 * f + 3, "n > 2f + 2"),
    "bulyan": (lambda f: 4 * f + 3, "n >= 4f + 3"),
}


class DataError(ValueError):
    """The scenario's data cannot be loaded or partitioned; ``str()`` is one line."""


def checkpoint_problems(s: Scenario, ds: Any) -> list[str]:
    """``model.checkpoint``'s folder missing or not fitting the data, as one line."""
    from fedkit.models import build_model
    from fedkit.models.checkpoint import CheckpointError

    try:
        build_model(s.model, ds.input_shape, ds.num_classes)
    except CheckpointError as e:
        return [f"model.checkpoint: {e}"]
    return []


def per_round(s: Scenario) -> int:
    """Clients a round samples (before dropouts)."""
    p, n = s.clients.per_round, s.clients.count
    k = p.count if p.count is not None else round((p.fraction or 1.0) * n)
    return min(n, max(p.min, k, 1))


def check_data(s: Scenario) -> list[str]:
    """Problems with the scenario's data and what depends on it (empty: none found)."""
    from fedkit.scenario.build import load_data

    problems: list[str] = []
    try:
        ds, parts = load_data(s)
    except DataError as e:
        problems.append(str(e))
    else:
        if "checkpoint" in s.model:  # exists, and fits the data (input shape, classes, tensors)
            problems += checkpoint_problems(s, ds)
        empty = [i for i, p in enumerate(parts) if len(p) == 0]
        if empty:
            problems.append(
                f"data.partition: {len(empty)} of {len(parts)} clients get no samples (first: "
                f"client {empty[0]}); use fewer clients or a larger dataset/alpha"
            )
    name = str(s.strategy["name"])
    if name in _NEEDS:
        f = int(s.strategy.get("f", 0))
        need, rule = _NEEDS[name]
        n = per_round(s)
        if n < need(f):
            problems.append(
                f"strategy {name} with f={f} needs {rule}, i.e. at least {need(f)} updates per "
                f"round, but clients.per_round gives {n}"
            )
    if not math.isfinite(s.train.lr):
        problems.append(f"train.lr must be finite, got {s.train.lr}")
    if s.devices is not None:  # the device files must match the clients (trace, profile table)
        from fedkit.scenario.build import client_names
        from fedkit.scenario.devices import build_devices

        try:
            build_devices(s.devices, client_names(s.clients.count), s.seed)
        except ValueError as e:
            problems.append(f"devices: {e}")
    return problems
