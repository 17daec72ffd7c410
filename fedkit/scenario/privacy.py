"""The ``privacy: {dp: {...}}`` section: differential privacy in a scenario.

::

    privacy:
      dp:
        mode: central            # or local: every client noises its own update
        clip_norm: 1.0           # fixed clip norm (the initial one with adaptive)
        target_epsilon: 4.0      # or noise_multiplier: 1.1 (exactly one of the two)
        delta: 1.0e-5
        adaptive: {target_quantile: 0.5, lr: 0.2}   # optional: Andrew et al. 2021
        accountant: rdp          # or pld (tight; needs clients.per_round.poisson: true)

Central DP-FedAvg (McMahan et al. 2018): clients clip (fedkit/runtime/privacy.py), the server
adds Gaussian noise of std ``z C / n`` to the fixed-denominator mean
(fedkit/secure/dp_aggregator.py). The sampling the accountant assumes is the scenario's:
``clients.per_round.poisson: true`` is Poisson sampling with ``q = fraction`` (add/remove
adjacency); otherwise a fixed-size sample of ``n`` clients, ``q = n / count``, accounted under
replace-one adjacency with RDP (about twice the Poisson ε). ``target_epsilon`` is turned into
the smallest noise multiplier whose full run stays within it (fedkit/secure/accountant.py).

Refused, because the guarantee would not hold: central DP with a strategy that does not
average (median, trimmed mean, Krum, Bulyan, FLTrust, centered clipping, norm bounding, FedAU,
a custom strategy), with split learning, or with ``server.on_too_few: retry`` (retries ask
clients beyond the sample the accountant counts); adaptive clipping with local DP.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from fedkit.types import Strict

if TYPE_CHECKING:
    from fedkit.aggregation import Aggregator
    from fedkit.runtime.privacy import DpPlan
    from fedkit.scenario.schema import Scenario

AVERAGING = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
"""Strategies whose reduce is the mean: central DP replaces it by the noised, clipped mean and
keeps their server optimizer (post-processing)."""


class AdaptiveClipping(Strict):
    """Quantile-tracking clip norm (Andrew et al. 2021); defaults are the paper's. The count
    of unclipped clients is noised too, and takes its share of the noise multiplier."""

    target_quantile: float = Field(default=0.5, ge=0, le=1)
    lr: float = Field(default=0.2, gt=0)
    count_stddev: float | None = Field(default=None, ge=0, description="null: expected clients / 20")
    geometric: bool = True


class Dp(Strict):
    """Differential privacy of the released model, user-level (a client's whole data)."""

    mode: Literal["central", "local"] = "central"
    clip_norm: float = Field(gt=0)
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    adaptive: AdaptiveClipping | None = None
    accountant: Literal["rdp", "pld"] = "rdp"

    @model_validator(mode="after")
    def _check(self) -> Dp:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give either noise_multiplier or target_epsilon (calibrated by the accountant), not "
                             + ("both" if self.noise_multiplier is not None else "neither"))
        if self.mode == "local" and self.adaptive is not None:
            raise ValueError("adaptive clipping needs a central server to noise the clipped count; "
                             "use a fixed clip_norm with mode: local")
        return self


def sampling_of(s: Scenario) -> tuple[float, str, float]:
    """``(q, sampling, expected clients per round)`` of the scenario's per-round sampling."""
    from fedkit.runtime.policy import Sampling

    per, n = s.clients.per_round, s.clients.count
    if per.poisson:
        q = float(per.fraction or 1.0)
        return q, "poisson", q * n
    size = Sampling(s.seed, per.fraction if per.count is None else None, per.count, per.min).size(n)
    return size / n, "fixed", float(size)


def _accounting(s: Scenario, dp: Dp) -> dict[str, Any]:
    q, sampling, _ = sampling_of(s)
    if dp.mode == "local":  # the server sees who took part: no amplification by sampling
        return {"q": 1.0, "sampling": "poisson", "population": None, "method": dp.accountant}
    return {"q": q, "sampling": sampling, "population": s.clients.count, "method": dp.accountant}


@functools.lru_cache(maxsize=32)
def _calibrate(target: float, rounds: int, delta: float, q: float, sampling: str, population: int | None,
               method: str) -> float:
    from fedkit.secure.accountant import noise_for_epsilon

    return noise_for_epsilon(target, q, rounds, delta, method=method, sampling=sampling,  # type: ignore[arg-type]
                             population=population)


def noise_multiplier(s: Scenario) -> float:
    """The accounted noise multiplier: as given, or calibrated to ``target_epsilon``."""
    dp = s.privacy.dp
    assert dp is not None
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None
    acc = _accounting(s, dp)
    return _calibrate(dp.target_epsilon, s.rounds, dp.delta, acc["q"], acc["sampling"], acc["population"],
                      acc["method"])


def _adaptive(s: Scenario, dp: Dp) -> Any:
    from fedkit.secure.dp import AdaptiveClip

    if dp.adaptive is None:
        return None
    _, sampling, expected = sampling_of(s)
    a = dp.adaptive
    return AdaptiveClip(expected, dp.clip_norm, a.target_quantile, a.lr, a.count_stddev, a.geometric,
                        poisson=sampling == "poisson")


def check_privacy(s: Scenario) -> None:
    """What ``privacy.dp`` needs from the rest of the scenario (cheap checks only: a
    ``target_epsilon`` is calibrated when the plan is built)."""
    dp = s.privacy.dp
    if dp is None:
        return
    if s.split is not None:
        raise ValueError("privacy.dp: split learning is not supported (the server part sees every client's "
                         "activations, which the clipped, noised client-part update does not protect)")
    if s.server.on_too_few == "retry":
        raise ValueError("privacy.dp: server.on_too_few: retry asks clients beyond the round's sample, which the "
                         "accountant does not count; use on_too_few: skip")
    name = str(s.strategy["name"])
    if dp.mode == "central" and name not in AVERAGING:
        raise ValueError(
            f"privacy.dp: strategy {name!r} does not average the updates, so noise calibrated to the mean's "
            f"sensitivity (clip_norm / clients per round) would not cover it; use one of {', '.join(AVERAGING)} "
            "(their server optimizers only post-process the noised mean), or mode: local"
        )
    acc = _accounting(s, dp)
    if acc["method"] == "pld" and acc["sampling"] == "fixed":
        raise ValueError("privacy.dp: accountant pld needs Poisson sampling (clients.per_round: {fraction: q, "
                         "poisson: true}); dp-accounting has no PLD for fixed-size samples: use accountant rdp")
    if dp.adaptive is not None:
        _check_noise_split(s, dp, acc)


def _check_noise_split(s: Scenario, dp: Dp, acc: dict[str, Any]) -> None:
    """Adaptive clipping spends part of ``z`` on the count: ``z`` must stay below the count's
    multiplier ``2 * count_stddev``. With a target ε, one accountant call at that bound tells
    whether the calibrated ``z`` would reach it (ε falls as ``z`` grows)."""
    from fedkit.secure.accountant import epsilon

    zb = 2.0 * _adaptive(s, dp).stddev
    if dp.noise_multiplier is not None:
        z, bad = dp.noise_multiplier, dp.noise_multiplier >= zb
    else:
        assert dp.target_epsilon is not None
        z, bad = math.inf, epsilon(zb, rounds=s.rounds, delta=dp.delta, **acc) > dp.target_epsilon
    if bad:
        need = f"{z:g}" if math.isfinite(z) else f"the noise for target_epsilon {dp.target_epsilon:g}"
        raise ValueError(
            f"privacy.dp.adaptive: {need} must be below 2 * count_stddev = {zb:g}, or the clipped count alone "
            "would use the whole budget; raise adaptive.count_stddev, the clients per round or target_epsilon"
        )


def dp_plan(s: Scenario, strategy: Aggregator) -> DpPlan | None:
    """The plan's DP part; for central DP its aggregator keeps ``strategy``'s server optimizer."""
    from fedkit.runtime.privacy import DpPlan
    from fedkit.secure.dp_aggregator import DpFedAvg

    dp = s.privacy.dp
    if dp is None:
        return None
    z = noise_multiplier(s)
    q, sampling, expected = sampling_of(s)
    agg = None
    if dp.mode == "central":
        adaptive = _adaptive(s, dp)
        try:
            z_update = z if adaptive is None else adaptive.update_noise_multiplier(z)
        except ValueError as e:
            raise ValueError(f"privacy.dp.adaptive: {e}") from None
        agg = DpFedAvg(strategy.server_opt, z_update, dp.clip_norm, expected, s.seed, adaptive,
                       poisson=sampling == "poisson")
    return DpPlan(dp.mode, z, dp.clip_norm, dp.delta, q, sampling, s.clients.count, dp.accountant, s.rounds, agg)


def describe_dp(s: Scenario) -> list[tuple[str, str]]:
    """What ``fedkit describe`` prints for a DP scenario: the settings and the ε of the full run."""
    dp = s.privacy.dp
    if dp is None:
        return []
    plan = dp_plan(s, _strategy(s))
    assert plan is not None
    q, sampling, expected = sampling_of(s)
    how = f"calibrated to target ε {dp.target_epsilon:g}" if dp.target_epsilon is not None else "given"
    clip = f"{dp.clip_norm:g}" + (f" initially, adaptive to quantile {dp.adaptive.target_quantile:g}"
                                   if dp.adaptive else " (fixed)")
    rows = [
        ("mode", dp.mode),
        ("noise multiplier z", f"{plan.noise_multiplier:.4g} ({how})"),
        ("clip norm", clip),
        ("sampling", f"{sampling}, q = {q:.4g} ({expected:g} of {s.clients.count} clients per round)"),
        ("accountant", dp.accountant + (" (local DP: q = 1, a client in every round)" if dp.mode == "local" else "")),
    ]
    if plan.aggregator is not None:
        rows.append(("noise std on the mean", f"{plan.aggregator.noise_multiplier * dp.clip_norm / expected:.4g}"))
    rows.append((f"ε after {s.rounds} rounds", f"{plan.final_epsilon():.4g} at δ = {dp.delta:g}"))
    return rows


def _strategy(s: Scenario) -> Aggregator:
    from fedkit.aggregation import make_aggregator

    return make_aggregator(str(s.strategy["name"]), **{k: v for k, v in s.strategy.items() if k != "name"})
