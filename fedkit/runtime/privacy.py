"""Differential privacy in the round engine: the client's clip mod and the server's DP plan.

DP-FedAvg (McMahan et al., ICLR 2018) splits into the three places ARCHITECTURE.md names:

- :func:`dp_clip`, a client mod just inside the uplink encoder: it clips the raw delta to the
  task's ``dp.clip_norm`` (the server re-clips anyway, so a client that skips it gains nothing),
  reports adaptive clipping's one bit in the reply metrics (``dp_unclipped``) and, for local
  DP, adds the client's own Gaussian noise before anything leaves the device;
- the server step, :class:`fedkit.secure.dp_aggregator.DpFedAvg` (central mode only);
- :class:`DpPlan`, what the engine asks each round: the clients' ``DpTask`` (this round's clip
  norm) and the round's privacy metrics, ε at the scenario's δ from the accountant.

With local DP the server is not trusted, so the mod also strips data-dependent metrics (the
training loss) from the reply; the example count still travels (the engine checks it).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedkit.runtime.task import DpTask
from fedkit.secure.accountant import epsilon, epsilon_curve
from fedkit.secure.dp import clip, local_noise, unclipped_bit
from fedkit.secure.dp_aggregator import UNCLIPPED, DpFedAvg

if TYPE_CHECKING:
    from fedkit.runtime.client import ClientFn, ClientState, Context
    from fedkit.types import Reply, Task

_LOCAL_METRICS = ("compute_s",)  # what a local-DP reply keeps besides the noised update


def dp_clip(state: ClientState, task: Task, ctx: Context, inner: ClientFn) -> tuple[ClientState, Reply]:
    """Clip (and for local DP, noise) the handler's raw delta as the task's ``dp`` says."""
    state, reply = inner(state, task, ctx)
    dp: DpTask | None = getattr(ctx.config, "dp", None)
    if dp is None or reply.delta is None:
        return state, reply
    delta, norm = clip(reply.delta, dp.clip_norm)
    metrics = dict(reply.metrics)
    if dp.noise_multiplier > 0:
        delta = local_noise(delta, clip_norm=dp.clip_norm, noise_multiplier=dp.noise_multiplier,
                            seed=ctx.config.seed, round=task.round, client=task.client)
        metrics = {k: v for k, v in metrics.items() if k in _LOCAL_METRICS}
    if dp.report_unclipped:
        metrics[UNCLIPPED] = 1.0 if unclipped_bit(norm, dp.clip_norm) else 0.0
    return state, dataclasses.replace(reply, delta=delta, metrics=metrics)


@dataclass(frozen=True, eq=False)
class DpPlan:
    """The DP part of a server plan, built once from the scenario (fedkit/scenario/privacy.py).

    ``noise_multiplier`` is the accounted ``z`` (the update and, with adaptive clipping, the
    count together); ``q`` the per-round sampling probability and ``sampling`` how the engine
    samples ("poisson" or "fixed"); local DP is accounted with ``q = 1`` (the server sees who
    took part) for a client in every round, an upper bound. ``aggregator``: the central step.
    """

    mode: str  # "central" | "local"
    noise_multiplier: float
    clip_norm: float
    delta: float
    q: float
    sampling: str
    population: int
    method: str
    rounds: int
    aggregator: DpFedAvg | Any = None  # or a step with the same clip_for_next / released / adaptive (DP-LoRA)

    @property
    def _account(self) -> dict[str, Any]:
        local = self.mode == "local"
        return {"q": 1.0 if local else self.q, "method": self.method,
                "sampling": "poisson" if local else self.sampling,
                "population": None if local else self.population}

    @functools.cached_property
    def curve(self) -> tuple[float, ...]:
        """ε after each round ``1..rounds`` (computed once, on first use)."""
        return epsilon_curve(self.noise_multiplier, rounds=self.rounds, delta=self.delta, **self._account)

    def epsilon(self, rounds: int) -> float:
        """ε at ``delta`` after ``rounds`` rounds."""
        if rounds <= 0:
            return 0.0
        if rounds <= len(self.curve):
            return self.curve[rounds - 1]
        return epsilon(self.noise_multiplier, rounds=rounds, delta=self.delta, **self._account)

    def final_epsilon(self) -> float:
        """The ε the whole run reaches (one accountant call; what ``fedkit describe`` prints)."""
        return epsilon(self.noise_multiplier, rounds=self.rounds, delta=self.delta, **self._account)

    def task(self, agg_state: Any) -> DpTask:
        """The clients' DP settings for the round about to start."""
        if self.aggregator is None:
            return DpTask(clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier)
        return DpTask(clip_norm=self.aggregator.clip_for_next(agg_state),
                      report_unclipped=self.aggregator.adaptive is not None)

    def metrics(self, round: int, agg_state: Any) -> dict[str, float]:
        """The round's row entries: ε so far at δ, and what the round's release used."""
        out = {"dp_epsilon": self.epsilon(round), "dp_delta": self.delta}
        if self.aggregator is not None:
            return out | self.aggregator.released(agg_state)
        return out | {"dp_clip_norm": self.clip_norm, "dp_noise_std": self.noise_multiplier * self.clip_norm}
