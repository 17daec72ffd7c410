"""The aggregation seam: a reduce function composed with a server optimizer.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, write every FedOpt method as
"combine client deltas into a pseudo-gradient, then take one server-optimizer step"; FedJAX
(``fedjax/core/federated_algorithm.py``) makes an algorithm a value of ``init`` and ``apply``.
We follow both: FedAdam is ``Aggregator(weighted_mean, adam(...))``, not a FedAvg subclass.

Optimizer state is a plain ``dict[str, list[np.ndarray]]`` that nobody mutates in place, so it
can be checkpointed with :func:`state_to_arrays` (npz-ready) and resumed bit-exactly with
:func:`state_from_arrays`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedkit.types import Params, Update

State = dict[str, list[np.ndarray]]
"""Server-optimizer state: named lists of arrays (``{}`` for stateless optimizers)."""

Reduce = Callable[[Sequence[Update]], Params]
"""Combines client deltas into one delta shaped like the params."""

_SEP = "/"


class ServerOpt(Protocol):
    """A server optimizer: ``x <- apply(state, x, delta)``; state in first, out first."""

    def init(self, params: Params) -> State: ...

    def apply(self, state: State, params: Params, delta: Params) -> tuple[State, Params]: ...


class Reweight(Protocol):
    """A stateful stage before the reduce: rescales each update from what the server has seen
    of that client so far (FedAU's participation intervals). ``apply`` is called once per round,
    also with no updates, so per-round counters keep ticking."""

    def init(self) -> State: ...

    def apply(self, state: State, updates: Sequence[Update]) -> tuple[State, list[Update]]: ...


REWEIGHT_PREFIX = "reweight."
"""Aggregator state keys of the reweight stage carry this prefix; the rest is the optimizer's."""


@dataclass(frozen=True)
class Aggregator:
    """One strategy = how deltas are combined x how the server moves along the result.

    >>> import numpy as np
    >>> from fedkit.types import Update
    >>> from fedkit.aggregation import Aggregator, weighted_mean, sgd
    >>> agg = Aggregator(weighted_mean, sgd(lr=1.0))  # FedAvg
    >>> x = [np.array([0.0, 0.0])]
    >>> ups = [Update("a", [np.array([1.0, 2.0])], 1), Update("b", [np.array([5.0, 6.0])], 3)]
    >>> state, x = agg.step(agg.init(x), x, ups)
    >>> x[0]
    array([4., 5.])
    """

    reduce: Reduce
    server_opt: ServerOpt
    reweight: Reweight | None = None

    def init(self, params: Params) -> State:
        if len(params) == 0:
            raise ValueError("cannot aggregate a model with no parameter arrays")
        state = self.server_opt.init(params)
        if self.reweight is not None:
            state = {**state, **{REWEIGHT_PREFIX + k: v for k, v in self.reweight.init().items()}}
        return state

    def step(self, state: State, params: Params, updates: Sequence[Update]) -> tuple[State, Params]:
        """Reduce ``updates`` (deltas local - global) and apply the result to ``params``.

        With a ``reweight`` stage, call this every round, with ``[]`` when nobody replied: the
        stage's state advances and the params come back unchanged."""
        if self.reweight is None:
            delta = self.reduce(updates)
            check_like(delta, params, what="reduced delta")
            return self.server_opt.apply(state, params, delta)
        n = len(REWEIGHT_PREFIX)
        rw = {k[n:]: v for k, v in state.items() if k.startswith(REWEIGHT_PREFIX)}
        opt = {k: v for k, v in state.items() if not k.startswith(REWEIGHT_PREFIX)}
        rw, updates = self.reweight.apply(rw, updates)
        if updates:
            delta = self.reduce(updates)
            check_like(delta, params, what="reduced delta")
            opt, params = self.server_opt.apply(opt, params, delta)
        return {**opt, **{REWEIGHT_PREFIX + k: v for k, v in rw.items()}}, params


def state_to_arrays(state: State) -> dict[str, np.ndarray]:
    """Flatten state to ``{"name/index": array}`` for ``np.savez`` (prefix keys to namespace)."""
    out: dict[str, np.ndarray] = {}
    for name, arrays in state.items():
        if _SEP in name:
            raise ValueError(f"state key {name!r} must not contain {_SEP!r}")
        for i, a in enumerate(arrays):
            out[f"{name}{_SEP}{i}"] = np.asarray(a)
    return out


def state_from_arrays(arrays: Mapping[str, np.ndarray]) -> State:
    """Inverse of :func:`state_to_arrays`; copies, so the source (e.g. an open npz) may go."""
    slots: dict[str, dict[int, np.ndarray]] = {}
    for key in arrays:
        name, sep, index = key.rpartition(_SEP)
        if not sep or not name or not index.isdigit():
            raise ValueError(f"state array key {key!r} is not of the form 'name{_SEP}index'")
        slots.setdefault(name, {})[int(index)] = np.array(arrays[key], copy=True)
    state: State = {}
    for name, by_index in slots.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"state {name!r} has indices {sorted(by_index)}, expected 0..n-1")
        state[name] = [by_index[i] for i in range(len(by_index))]
    return state


# --- helpers shared by the reducers and optimizers (not public API) ---------------------------


def check_like(arrays: Params, like: Params, *, what: str) -> None:
    """Raise if ``arrays`` do not have the shapes of ``like``, naming the first bad index."""
    if len(arrays) != len(like):
        raise ValueError(f"{what} has {len(arrays)} arrays, params have {len(like)}")
    for k, (a, p) in enumerate(zip(arrays, like, strict=True)):
        if np.shape(a) != np.shape(p):
            raise ValueError(
                f"{what}: array {k} has shape {np.shape(a)}, params have {np.shape(p)}"
            )


def cast_like(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float64 result back to ``dtype``; integer arrays are rounded, not truncated."""
    if np.issubdtype(dtype, np.integer):
        x = np.rint(x)
    return x.astype(dtype)


def state_dtype(dtype: np.dtype) -> np.dtype:
    """Optimizer moments keep a float param's dtype (memory); other params get float64."""
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def check_real(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Validate a real hyperparameter and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    lo_bad = lo is not None and (v <= lo if lo_open else v < lo)
    hi_bad = hi is not None and (v >= hi if hi_open else v > hi)
    if not math.isfinite(v) or lo_bad or hi_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name} must be in {left}{lo_s}, {hi_s}{right}, got {value!r}")
    return v


def check_int(name: str, value: Any, *, lo: int) -> int:
    """Validate an integer hyperparameter (bools rejected) and return it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    return int(value)
