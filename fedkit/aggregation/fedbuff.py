"""FedBuff: buffered asynchronous aggregation; the server steps once every K arrivals.

Reference: Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS 2022 (arXiv 2106.06639), Algorithm 1: each arriving
delta is discounted by its staleness, ``s(tau) = 1/sqrt(1 + tau)``, and added to a buffer; once
``K`` deltas are in, the server takes one step along their mean with the server learning rate
and empties the buffer. APPFL (``APPFL/APPFL:.../fedbuff_aggregator.py``) does the same.

Here the server step is any :class:`~fedkit.aggregation.base.ServerOpt` (``sgd(lr)`` is the
paper's ``x <- x + eta_g * mean``; server momentum or Adam compose the same way), and the
pseudo-gradient handed to it is

    delta = sum_i s(tau_i) w_i delta_i / sum_i w_i

with ``w_i = 1`` by default (the paper's plain mean over the K) or e.g. ``num_examples``. The
staleness discount stays in the numerator only: a buffer of stale deltas moves the model less,
rather than being renormalised back to full size.

Tuning: ``K`` trades freshness for variance. ``K = 1`` is FedAsync-like (one step per arrival);
the paper finds ``K = 10`` with concurrency ~100-1000 works well. Larger ``K`` tolerates a
larger server ``lr``. The buffer keeps a float64 running sum, not the K deltas: memory is one
model however large K is. Staleness is fixed on arrival: the version only moves at a flush.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedkit.aggregation.base import ServerOpt, State, check_int, check_like, check_real
from fedkit.aggregation.server_opt import SGD
from fedkit.aggregation.staleness import Polynomial, StalenessFn, check_tau, staleness
from fedkit.types import ClientId, Params

_F64 = np.float64


@dataclass(frozen=True)
class FedBuffState:
    """The buffer and the server's bookkeeping; a value, replaced by every call.

    ``version`` counts flushes (the global model's version); ``acc`` is the float64 running
    sum ``sum s(tau_i) w_i delta_i`` (empty tuple while the buffer is empty); ``clients`` and
    ``taus`` record who is in the buffer and how stale, for metrics; ``opt`` is the server
    optimizer's state.
    """

    opt: State
    version: int = 0
    count: int = 0
    weight_sum: float = 0.0
    acc: tuple[np.ndarray, ...] = ()
    clients: tuple[ClientId, ...] = ()
    taus: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class FedBuff:
    """FedBuff configuration: buffer size ``k``, server step, staleness discount.

    >>> import numpy as np
    >>> from fedkit.aggregation.fedbuff import FedBuff
    >>> from fedkit.aggregation.server_opt import sgd
    >>> fb = FedBuff(k=2, server_opt=sgd(lr=1.0))
    >>> x = [np.zeros(1)]
    >>> s = fb.add(fb.init(x), [np.array([2.0])], staleness=0)
    >>> s = fb.add(s, [np.array([4.0])], staleness=3)      # discounted by 1/sqrt(4) = 0.5
    >>> s, x = fb.flush(s, x)
    >>> x[0], s.version, s.count
    (array([2.]), 1, 0)
    """

    k: int = 10
    server_opt: ServerOpt = field(default_factory=SGD)
    staleness: StalenessFn = Polynomial(0.5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_int("k", self.k, lo=1))
        if not callable(self.staleness):
            raise ValueError(f"staleness must be a staleness function, got {self.staleness!r}")

    def init(self, params: Params) -> FedBuffState:
        if len(params) == 0:
            raise ValueError("cannot aggregate a model with no parameter arrays")
        return FedBuffState(opt=self.server_opt.init(params))

    def add(
        self,
        state: FedBuffState,
        delta: Params,
        weight: float = 1.0,
        staleness: int = 0,
        client: ClientId = "",
    ) -> FedBuffState:
        """Buffer one delta, discounted by ``s(staleness)`` and weighted by ``weight``."""
        w = check_real("weight", weight, lo=0.0)
        tau = check_tau(staleness)
        if state.acc:
            check_like(delta, list(state.acc), what=f"delta from client {client!r}")
        scale = self.staleness(tau) * w
        if state.acc:
            acc = tuple(
                a + scale * np.asarray(d, _F64) for a, d in zip(state.acc, delta, strict=True)
            )
        else:
            acc = tuple(scale * np.asarray(d, _F64) for d in delta)
        return FedBuffState(
            opt=state.opt,
            version=state.version,
            count=state.count + 1,
            weight_sum=state.weight_sum + w,
            acc=acc,
            clients=(*state.clients, client),
            taus=(*state.taus, tau),
        )

    def ready(self, state: FedBuffState) -> bool:
        """True once ``k`` deltas are buffered: time to :meth:`flush`."""
        return state.count >= self.k

    def flush(self, state: FedBuffState, params: Params) -> tuple[FedBuffState, Params]:
        """One server step along the buffered pseudo-gradient; empties the buffer.

        May be called before ``k`` arrived (e.g. at the end of a run or on a timer)."""
        if state.count == 0:
            raise ValueError("cannot flush an empty FedBuff buffer")
        if state.weight_sum <= 0.0:
            raise ValueError("cannot flush a FedBuff buffer whose weights sum to 0")
        delta = [a / state.weight_sum for a in state.acc]
        check_like(delta, params, what="buffered delta")
        opt, new = self.server_opt.apply(state.opt, params, delta)
        return FedBuffState(opt=opt, version=state.version + 1), new

    def on_update(
        self,
        state: FedBuffState,
        params: Params,
        delta: Params,
        version: int,
        weight: float = 1.0,
        client: ClientId = "",
    ) -> tuple[FedBuffState, Params, bool]:
        """Add a reply trained on ``version``; flush if that filled the buffer.

        Returns ``(state, params, flushed)``; ``params`` is unchanged unless ``flushed``."""
        tau = staleness(state.version, version)
        state = self.add(state, delta, weight=weight, staleness=tau, client=client)
        if not self.ready(state):
            return state, params, False
        state, params = self.flush(state, params)
        return state, params, True


def buffered(state: FedBuffState) -> Sequence[tuple[ClientId, int]]:
    """``(client, staleness)`` of every buffered delta, in arrival order (for metrics)."""
    return list(zip(state.clients, state.taus, strict=True))
