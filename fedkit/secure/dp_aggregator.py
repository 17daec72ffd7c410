"""Central DP-FedAvg as an aggregator: the server step of McMahan et al. (ICLR 2018).

:class:`DpFedAvg` has the aggregator interface (``init``, ``step``) and replaces a strategy's
reduce with :func:`fedkit.secure.dp.dp_mean` (clip, fixed-denominator mean, Gaussian noise),
keeping its server optimizer: DP-FedAvg with ``sgd(lr)``, DP-FedAdam with ``adam``; the
optimizer only post-processes the noised mean, so the guarantee is unchanged. Only strategies
whose reduce *is* a mean qualify (see ``fedkit/scenario/privacy.py``): a median or Krum of
clipped updates has another sensitivity than ``C / n``, which the noise is calibrated to.

With adaptive clipping (Andrew et al. 2021) the clip norm is state: each round's norm is read
from the state, sent to the clients in their tasks, and moved by the noised fraction of
clients that reported ``dp_unclipped = 1`` in their reply metrics (a client that did not report
counts as clipped). The noise multiplier given here is the update's share ``z_d`` of the
accounted ``z`` (:meth:`~fedkit.secure.dp.AdaptiveClip.update_noise_multiplier`).

Noise is keyed by ``(seed, "dp-noise", k)`` and the count noise by ``(seed, "dp-clip-count",
k)``, where ``k`` counts this aggregator's releases (stored in the state), so a resumed run
draws exactly the noise the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkit.aggregation.base import ServerOpt, State, check_like, check_real
from fedkit.secure.dp import AdaptiveClip, ClipState, central_std, dp_mean
from fedkit.types import Params, Update

PREFIX = "dp."
"""Keys of the DP part of the aggregator state (the rest is the server optimizer's)."""

UNCLIPPED = "dp_unclipped"
"""The reply metric carrying a client's adaptive-clipping bit (1.0: its update fit in C)."""


def _scalar(state: State, key: str) -> float:
    return float(np.asarray(state[PREFIX + key][0]))


@dataclass(frozen=True)
class DpFedAvg:
    """``x <- server_opt(x, dp_mean(clip(deltas)))`` with fixed or adaptive clipping.

    ``expected_clients``: the fixed denominator, the number of clients each round asks
    (``q * population`` under Poisson sampling, ``poisson=True``).

    >>> import numpy as np
    >>> from fedkit.aggregation import sgd
    >>> agg = DpFedAvg(sgd(1.0), noise_multiplier=0.0, clip_norm=1.0, expected_clients=4, seed=0)
    >>> x = [np.zeros(2)]
    >>> ups = [Update("a", [np.array([3.0, 4.0])], 1), Update("b", [np.array([0.2, 0.0])], 1)]
    >>> _, x = agg.step(agg.init(x), x, ups)  # (clip([3, 4]) + [0.2, 0]) / 4
    >>> x[0]
    array([0.2, 0.2])
    """

    server_opt: ServerOpt
    noise_multiplier: float  # on the update (z_d when the clip norm is adaptive)
    clip_norm: float  # the fixed norm, or the initial one of ``adaptive``
    expected_clients: float
    seed: int
    adaptive: AdaptiveClip | None = None
    poisson: bool = False

    def __post_init__(self) -> None:
        check_real("noise_multiplier", self.noise_multiplier, lo=0.0)
        check_real("clip_norm", self.clip_norm, lo=0.0, lo_open=True)
        check_real("expected_clients", self.expected_clients, lo=0.0, lo_open=True)

    def init(self, params: Params) -> State:
        if len(params) == 0:
            raise ValueError("cannot aggregate a model with no parameter arrays")
        c = self.clip_norm if self.adaptive is None else self.adaptive.init().clip_norm
        dp = {"clip": c, "releases": 0.0, "last_clip": c, "unclipped": float("nan")}
        return {**self.server_opt.init(params), **{PREFIX + k: [np.array(v)] for k, v in dp.items()}}

    def clip_for_next(self, state: State) -> float:
        """The clip norm the next round's clients use."""
        return _scalar(state, "clip")

    def released(self, state: State) -> dict[str, float]:
        """What the last release used: clip norm, noise std on the mean, unclipped fraction."""
        c = _scalar(state, "last_clip")
        out = {
            "dp_clip_norm": c,
            "dp_noise_std": central_std(self.noise_multiplier, c, self.expected_clients),
        }
        if self.adaptive is not None and not np.isnan(_scalar(state, "unclipped")):
            out["dp_unclipped_frac"] = _scalar(state, "unclipped")
        return out

    def step(self, state: State, params: Params, updates: Sequence[Update]) -> tuple[State, Params]:
        c = _scalar(state, "clip")
        k = int(_scalar(state, "releases")) + 1
        delta = dp_mean(
            [u.delta for u in updates],
            clip_norm=c,
            noise_multiplier=self.noise_multiplier,
            expected_clients=self.expected_clients,
            seed=self.seed,
            round=k,
            poisson=self.poisson,
        )
        check_like(delta, params, what="DP mean")
        opt = {key: v for key, v in state.items() if not key.startswith(PREFIX)}
        opt, params = self.server_opt.apply(opt, params, delta)
        nxt, frac = c, float("nan")
        if self.adaptive is not None:
            bits = [float(u.metrics.get(UNCLIPPED, 0.0)) >= 0.5 for u in updates]
            st, frac = self.adaptive.update(ClipState(c), bits, seed=self.seed, round=k)
            nxt = st.clip_norm
        dp = {"clip": nxt, "releases": float(k), "last_clip": c, "unclipped": frac}
        return {**opt, **{PREFIX + key: [np.array(v)] for key, v in dp.items()}}, params
