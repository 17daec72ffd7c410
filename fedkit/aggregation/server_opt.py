"""Server optimizers: how the global model moves along the reduced client delta.

References:
- Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
  Optimization", ICLR 2021 (arXiv 2003.00295), Algorithm 2: server SGD, Adam, Yogi, Adagrad
  applied to the pseudo-gradient Delta = reduced client delta.
- Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
  Visual Classification", arXiv 1909.06335, 2019 (FedAvgM: server momentum).

The delta points *towards* the clients (local - global), so every rule adds it: ``x + lr * ...``.
As in the paper, Adam and Yogi have no bias correction; the moments start at ``m = 0`` and
``v = v0`` (default 0, as Flower does; the paper's analysis assumes ``v0 >= tau**2``). Each step
computes in float64 and casts back; moments are stored in the param's dtype (float64 for
non-float params). Nothing is updated in place: every call returns new arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedkit.aggregation.base import State, cast_like, check_like, check_real, state_dtype
from fedkit.types import Params

_F64 = np.float64


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=_F64)


def _step(params: Params, direction: list[np.ndarray], lr: float) -> Params:
    return [
        cast_like(_f64(x) + lr * d, np.asarray(x).dtype)
        for x, d in zip(params, direction, strict=True)
    ]


def _check_state(state: State, params: Params, names: tuple[str, ...]) -> None:
    for name in names:
        if name not in state:
            raise ValueError(f"optimizer state lacks {name!r}; has {sorted(state)}")
        check_like(state[name], params, what=f"optimizer state {name!r}")


@dataclass(frozen=True)
class SGD:
    """``x <- x + lr * delta``; with ``lr=1`` and a weighted mean this is FedAvg exactly."""

    lr: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", check_real("lr", self.lr, lo=0.0, lo_open=True))

    def init(self, params: Params) -> State:
        return {}

    def apply(self, state: State, params: Params, delta: Params) -> tuple[State, Params]:
        check_like(delta, params, what="delta")
        return {}, _step(params, [_f64(d) for d in delta], self.lr)


@dataclass(frozen=True)
class Momentum:
    """FedAvgM: ``v <- momentum * v + delta``; ``x <- x + lr * v``.

    Nesterov moves along ``delta + momentum * v`` instead. Momentum smooths the round-to-round
    swing of the delta under non-IID client sampling.
    """

    lr: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", check_real("lr", self.lr, lo=0.0, lo_open=True))
        object.__setattr__(
            self, "momentum", check_real("momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        )
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"nesterov must be a bool, got {self.nesterov!r}")

    def init(self, params: Params) -> State:
        return {"v": [np.zeros(np.shape(p), state_dtype(np.asarray(p).dtype)) for p in params]}

    def apply(self, state: State, params: Params, delta: Params) -> tuple[State, Params]:
        check_like(delta, params, what="delta")
        _check_state(state, params, ("v",))
        beta = self.momentum
        v_new = [
            cast_like(beta * _f64(v) + _f64(d), v.dtype)
            for v, d in zip(state["v"], delta, strict=True)
        ]
        if self.nesterov:
            direction = [_f64(d) + beta * _f64(v) for d, v in zip(delta, v_new, strict=True)]
        else:
            direction = [_f64(v) for v in v_new]
        return {"v": v_new}, _step(params, direction, self.lr)


VRule = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
"""Second-moment update ``(v, delta**2, beta2) -> v_new`` in float64."""

V_RULES: dict[str, VRule] = {
    # Adam: an exponential average; v decays multiplicatively when deltas turn small.
    "adam": lambda v, g2, b2: b2 * v + (1 - b2) * g2,
    # Yogi: v moves by at most (1-b2) delta**2 per round, so the step grows gently.
    "yogi": lambda v, g2, b2: v - (1 - b2) * g2 * np.sign(v - g2),
    # Adagrad: v only grows, so steps only ever shrink (beta2 is not used).
    "adagrad": lambda v, g2, b2: v + g2,
}


@dataclass(frozen=True)
class FedOpt:
    """Adaptive server optimizer of Reddi et al. (Algorithm 2):
    ``m <- b1 m + (1-b1) delta``; ``v <- rule(v, delta**2)``; ``x <- x + lr m / (sqrt(v) + tau)``.

    ``tau`` sets the degree of adaptivity: small tau gives sign-like steps of about ``lr`` per
    coordinate, large tau turns it into momentum SGD with step ``lr / tau``.
    """

    rule: str
    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    v0: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in V_RULES:
            raise ValueError(f"unknown second-moment rule {self.rule!r}; known: {', '.join(V_RULES)}")
        fix = object.__setattr__
        fix(self, "lr", check_real("lr", self.lr, lo=0.0, lo_open=True))
        fix(self, "beta1", check_real("beta1", self.beta1, lo=0.0, hi=1.0, hi_open=True))
        fix(self, "beta2", check_real("beta2", self.beta2, lo=0.0, hi=1.0, hi_open=True))
        fix(self, "tau", check_real("tau", self.tau, lo=0.0, lo_open=True))
        fix(self, "v0", check_real("v0", self.v0, lo=0.0))

    def init(self, params: Params) -> State:
        return {
            "m": [np.zeros(np.shape(p), state_dtype(np.asarray(p).dtype)) for p in params],
            "v": [np.full(np.shape(p), self.v0, state_dtype(np.asarray(p).dtype)) for p in params],
        }

    def apply(self, state: State, params: Params, delta: Params) -> tuple[State, Params]:
        check_like(delta, params, what="delta")
        _check_state(state, params, ("m", "v"))
        rule, b1, b2 = V_RULES[self.rule], self.beta1, self.beta2
        m_new, v_new, direction = [], [], []
        for m, v, d in zip(state["m"], state["v"], delta, strict=True):
            d64 = _f64(d)
            m_k = cast_like(b1 * _f64(m) + (1.0 - b1) * d64, m.dtype)
            v_k = cast_like(rule(_f64(v), d64 * d64, b2), v.dtype)
            m_new.append(m_k)
            v_new.append(v_k)
            direction.append(_f64(m_k) / (np.sqrt(_f64(v_k)) + self.tau))
        return {"m": m_new, "v": v_new}, _step(params, direction, self.lr)


def sgd(lr: float = 1.0) -> SGD:
    """Plain server SGD on the delta (``lr=1``: FedAvg)."""
    return SGD(lr)


def momentum(lr: float = 1.0, momentum: float = 0.9, nesterov: bool = False) -> Momentum:
    """Server momentum (FedAvgM)."""
    return Momentum(lr, momentum, nesterov)


def adam(
    lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, v0: float = 0.0
) -> FedOpt:
    """Server Adam without bias correction (FedAdam)."""
    return FedOpt("adam", lr, beta1, beta2, tau, v0)


def yogi(
    lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, v0: float = 0.0
) -> FedOpt:
    """Server Yogi (FedYogi)."""
    return FedOpt("yogi", lr, beta1, beta2, tau, v0)


def adagrad(lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3, v0: float = 0.0) -> FedOpt:
    """Server Adagrad (FedAdagrad). ``beta1`` defaults to 0 (no momentum, as in Flower); the
    paper's Algorithm 2 keeps Adam's momentum term: use ``beta1=0.9`` for that."""
    return FedOpt("adagrad", lr, beta1, 0.99, tau, v0)
