"""Shared fixtures: small, fast scenarios built in code."""

from __future__ import annotations

from typing import Any

import pytest


def tiny_raw(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "rounds": 3,
        "clients": {"count": 6, "per_round": {"fraction": 0.5}},
        "data": {"dataset": {"name": "digits"}, "partition": {"name": "dirichlet", "alpha": 1.0}},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.1},
        "strategy": {"name": "fedavg"},
        "output": {"plot": False},
    }
    for key, value in over.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return raw


@pytest.fixture
def tiny() -> Any:
    return tiny_raw
