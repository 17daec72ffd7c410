"""Staleness functions and bookkeeping for asynchronous aggregation.

Reference: Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", arXiv 1903.03934, 2019
(FedAsync), section 5: the mixing weight of an update trained on a model ``tau`` versions old is
scaled by ``s(tau)`` with ``s`` constant, polynomial ``(1 + tau)**-a`` or hinge
``1 if tau <= b else 1 / (a (tau - b) + 1)``. FedBuff (Nguyen et al., AISTATS 2022) uses the
polynomial with ``a = 0.5``, i.e. ``1 / sqrt(1 + tau)``; FedCompass (Li et al., ICLR 2024) too.

Staleness is counted in *server model versions*: the server's version goes up by one every
time the global model changes, every reply names the version it trained on, and
``staleness = server version - reply version``. All three functions equal 1 at ``tau = 0`` and
never increase, so a fresh update is never discounted and an older one never counts more.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fedkit.aggregation.base import check_real

StalenessFn = Callable[[int], float]
"""``s(tau)``: the discount for an update ``tau >= 0`` server versions old."""


def check_tau(tau: Any) -> int:
    if isinstance(tau, bool) or not isinstance(tau, numbers.Integral) or tau < 0:
        raise ValueError(f"staleness must be an integer >= 0, got {tau!r}")
    return int(tau)


def staleness(server_version: int, client_version: int) -> int:
    """How many server versions the client's base model is behind (``>= 0``)."""
    tau = server_version - client_version
    if tau < 0:
        raise ValueError(
            f"client trained on version {client_version}, newer than the server's "
            f"{server_version}: the reply names a version the server never sent"
        )
    return check_tau(tau)


@dataclass(frozen=True)
class Constant:
    """``s(tau) = 1``: staleness ignored (plain asynchronous SGD)."""

    def __call__(self, tau: int) -> float:
        check_tau(tau)
        return 1.0


@dataclass(frozen=True)
class Polynomial:
    """``s(tau) = (1 + tau)**-a``: smooth decay; ``a = 0.5`` is FedBuff's ``1/sqrt(1 + tau)``."""

    a: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", check_real("a", self.a, lo=0.0))

    def __call__(self, tau: int) -> float:
        return float((1.0 + check_tau(tau)) ** -self.a)


@dataclass(frozen=True)
class Hinge:
    """``s(tau) = 1`` up to ``b`` versions old, then ``1 / (a (tau - b) + 1)``: tolerate a little
    staleness for free, then decay like 1/tau."""

    a: float = 10.0
    b: float = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", check_real("a", self.a, lo=0.0))
        object.__setattr__(self, "b", check_real("b", self.b, lo=0.0))

    def __call__(self, tau: int) -> float:
        tau = check_tau(tau)
        return 1.0 if tau <= self.b else 1.0 / (self.a * (tau - self.b) + 1.0)


def constant() -> Constant:
    return Constant()


def polynomial(a: float = 0.5) -> Polynomial:
    return Polynomial(a)


def hinge(a: float = 10.0, b: float = 4) -> Hinge:
    return Hinge(a, b)


_BUILD: dict[str, Callable[..., StalenessFn]] = {
    "constant": constant,
    "polynomial": polynomial,
    "hinge": hinge,
}

STALENESS: Mapping[str, Callable[..., StalenessFn]] = MappingProxyType(_BUILD)
"""Staleness function name -> constructor (defaults: polynomial a=0.5; hinge a=10, b=4, the
values of Xie et al.'s experiments)."""


def make_staleness(name: str, **params: Any) -> StalenessFn:
    """``make_staleness("hinge", a=10, b=4)``; unknown names or parameters raise ValueError."""
    if name not in _BUILD:
        close = difflib.get_close_matches(name, list(_BUILD), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown staleness function {name!r}{hint} (known: {', '.join(_BUILD)})")
    try:
        return _BUILD[name](**params)
    except TypeError as e:
        raise ValueError(f"staleness function {name!r}: {e}") from None
