"""FedAsync: the server mixes every arriving client model into the global one at once.

Reference: Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", arXiv 1903.03934, 2019,
Algorithm 1: ``x <- (1 - a_t) x + a_t y`` with ``a_t = alpha * s(t - tau)``, where ``y`` is the
client's trained model, ``tau`` the version it started from and ``s`` a staleness function
(:mod:`fedkit.aggregation.staleness`). Default ``alpha=0.9`` and ``s = (1 + tau)**-0.5`` are the
APPFL defaults (``APPFL/APPFL:.../fedasync_aggregator.py``); the paper sweeps alpha.

Two forms, because fedkit clients send deltas (local - the global they received):
- model form :meth:`FedAsync.apply_model` mixes the client's model ``y`` (the paper exactly);
  from a delta, ``y = x_tau + delta`` needs the stale base ``x_tau`` the server sent.
- delta form :meth:`FedAsync.apply` is ``x <- x + a_t * delta``, i.e. mixing ``y = x + delta``:
  the client's step is applied to the current model. For ``tau = 0`` both forms agree; for
  ``tau > 0`` the model form also pulls ``x`` back towards ``x_tau`` by ``a_t (x_tau - x)``,
  which the delta form does not. The delta form needs no model history, so it is what a
  policy should use unless it keeps the versions it sent.

Every call bumps the server version by one: each arrival is a new global model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedkit.aggregation.base import cast_like, check_like, check_real
from fedkit.aggregation.staleness import Polynomial, StalenessFn, staleness
from fedkit.types import Params

_F64 = np.float64


def mix(x: Params, y: Params, a: float) -> Params:
    """``(1 - a) x + a y`` per array, in float64, cast back to ``x``'s dtypes."""
    a = check_real("mixing weight", a, lo=0.0, hi=1.0)
    check_like(y, x, what="client params")
    return [
        cast_like((1.0 - a) * np.asarray(p, _F64) + a * np.asarray(q, _F64), np.asarray(p).dtype)
        for p, q in zip(x, y, strict=True)
    ]


def mix_delta(x: Params, delta: Params, a: float) -> Params:
    """``x + a delta``: :func:`mix` of ``x`` with ``y = x + delta``, without forming ``y``."""
    a = check_real("mixing weight", a, lo=0.0, hi=1.0)
    check_like(delta, x, what="client delta")
    return [
        cast_like(np.asarray(p, _F64) + a * np.asarray(d, _F64), np.asarray(p).dtype)
        for p, d in zip(x, delta, strict=True)
    ]


@dataclass(frozen=True)
class FedAsyncState:
    """``version``: how many client updates have been mixed in (the global model's version)."""

    version: int = 0


@dataclass(frozen=True)
class FedAsync:
    """FedAsync configuration: ``a_t = alpha * staleness(t - tau)``.

    >>> import numpy as np
    >>> from fedkit.aggregation.fedasync import FedAsync
    >>> from fedkit.aggregation.staleness import constant
    >>> fa = FedAsync(alpha=0.5, staleness=constant())
    >>> state, x = fa.apply_model(fa.init(), [np.array([0.0])], [np.array([4.0])], version=0)
    >>> x[0], state.version
    (array([2.]), 1)
    """

    alpha: float = 0.9
    staleness: StalenessFn = Polynomial(0.5)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "alpha", check_real("alpha", self.alpha, lo=0.0, hi=1.0, lo_open=True)
        )
        if not callable(self.staleness):
            raise ValueError(f"staleness must be a staleness function, got {self.staleness!r}")

    def init(self) -> FedAsyncState:
        return FedAsyncState()

    def weight(self, state: FedAsyncState, version: int) -> float:
        """The mixing weight ``a_t`` for a reply trained on ``version``."""
        return self.alpha * self.staleness(staleness(state.version, version))

    def apply(
        self, state: FedAsyncState, params: Params, delta: Params, version: int
    ) -> tuple[FedAsyncState, Params]:
        """Delta form: ``x <- x + a_t * delta`` (see the module docstring)."""
        a = self.weight(state, version)
        return FedAsyncState(state.version + 1), mix_delta(params, delta, a)

    def apply_model(
        self, state: FedAsyncState, params: Params, client_params: Params, version: int
    ) -> tuple[FedAsyncState, Params]:
        """Model form: ``x <- (1 - a_t) x + a_t y`` (the paper's update)."""
        a = self.weight(state, version)
        return FedAsyncState(state.version + 1), mix(params, client_params, a)
