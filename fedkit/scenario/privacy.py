"""Scenario schema for ``privacy: {secagg: {...}, dp: {...}}`` and what each needs from the rest.

One :class:`Privacy` section, two mechanisms; either, both (see "Together") or neither.

**Secure aggregation** (fedkit/runtime/secagg.py; SecAgg+, Bell et al. CCS 2020) lets the
server learn only the sum of the round's updates. Each client puts ``weight x delta`` into the
field: clipped to [-clip, clip] and rounded stochastically to ``levels = (2^bits - 1) // n``
steps for the n clients a round samples, so the sum of n inputs cannot wrap. That field
encoding *is* the uplink's quantiser (quantisation before masking is the sound composition);
precision is one step ``2 clip / levels`` per client and value (about 5e-9 x clip for 10
clients at 32 bits). Compositions that are not sound are refused here, each with the fix.

**Differential privacy**::

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
a custom strategy) or with ``server.over_select`` (more clients train than the sample the
accountant counts); any DP with split learning, an asynchronous strategy (a client may send
several updates per round) or ``server.on_too_few: retry`` (retries ask clients beyond the
sample); adaptive clipping with local DP. Secure aggregation also refuses Poisson sampling
(its field is sized for a fixed count) and colluding attacks (simulated on each update).

**Together.** ``dp.mode: local`` with ``secagg`` is supported: the client mods run clip, then
local noise, then field quantisation and masking (``DEFAULT_MODS`` in
fedkit/runtime/client.py), so each update is private before it is masked and everything after
is post-processing. ``dp.mode: central`` with ``secagg`` is refused: the central server step
re-clips each update and reads each client's adaptive-clipping bit, and secure aggregation shows
it only the sum (sound central DP over SecAgg would need the noise added to the unmasked sum, a
fixed denominator instead of SecAgg's survivor count, and the clipped count inside the field).
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

MEAN_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
"""Strategies that reduce by the weighted mean: they apply one combined update as they would
the mean of many (secure aggregation), and central DP replaces their reduce by the noised,
clipped mean and keeps their server optimizer (post-processing). The others (median, trimmed
mean, Krum, ..., FedAU's per-client reweighting) need each client's update, which secure
aggregation never shows the server, and have another sensitivity than ``clip / n``."""

SPARSIFIERS = ("topk", "randk")



class SecAgg(Strict):
    """SecAgg+ over a random k-regular graph (``complete: true``: Bonawitz et al.'s complete graph).

    ``clip``: the range [-clip, clip] of each weighted update value (values beyond are clipped:
    ``secagg_clipped`` in the metrics counts them); ``bits``: the field's word size, 32 or 64.
    ``degree`` k (default ``2 ceil(2 log2 n)``, at most n - 1) and ``threshold`` t (default a
    strict majority of the neighbours): each client's secrets survive while at most k - t of
    its neighbours drop out. ``min_survivors``: fewest inputs the server may sum (default
    max(2, t)). ``weighting``: ``examples`` (FedAvg's, each client's count capped at
    ``max_weight`` as in Flower, travelling inside the masked sum; ``secagg_capped`` counts
    the capped clients) or ``uniform``. A smaller ``max_weight`` or ``clip`` is finer: the
    average's error is about ``2 clip max_weight n / (2^bits mean(n_i))``. ``deadline_s``: each stage
    after the first (default ``server.deadline_s``; the first includes local training and uses
    ``server.deadline_s``).
    """

    clip: float = Field(default=8.0, gt=0, allow_inf_nan=False)
    bits: Literal[32, 64] = 32
    degree: int | None = Field(default=None, ge=1)
    complete: bool = False
    threshold: int | None = Field(default=None, ge=1)
    min_survivors: int | None = Field(default=None, ge=2)
    weighting: Literal["examples", "uniform"] = "examples"
    max_weight: int = Field(default=1000, ge=1)
    deadline_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _graph(self) -> SecAgg:
        if self.complete and self.degree is not None:
            raise ValueError("give either degree or complete: true (degree n - 1), not both")
        if self.degree is not None and self.threshold is not None and self.threshold > self.degree:
            raise ValueError(f"threshold {self.threshold} exceeds degree {self.degree}: "
                             "a client's shares go to its degree neighbours only")
        return self

    def levels(self, n: int) -> int:
        """Quantisation levels for ``n`` clients: the finest whose sum cannot wrap."""
        return (2**self.bits - 1) // n


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

class Privacy(Strict):
    """Privacy mechanisms of a scenario: ``secagg``, secure aggregation; ``dp``, differential
    privacy. Always present (``privacy: {}`` by default), so ``s.privacy.dp`` needs no guard."""

    secagg: SecAgg | None = None
    dp: Dp | None = None


def check_privacy(s: Scenario) -> None:
    """What the privacy section needs from the rest of the scenario (one clear error each)."""
    _check_secagg(s)
    _check_dp(s)
    dp = s.privacy.dp
    if s.privacy.secagg is not None and dp is not None and dp.mode == "central":
        raise ValueError(
            "privacy.dp.mode: central with privacy.secagg is not supported: the central DP server step "
            "clips each client's update and reads each one's adaptive-clipping bit, but secure aggregation "
            "shows the server only their sum; use dp.mode: local (each client clips and noises its update "
            "before it is masked), or drop one of the two sections")


def _uplink_problem(spec: str) -> str | None:
    from fedkit.compression import parse_spec

    parsed = parse_spec(spec)
    names = [n for n, _ in parsed.stages]
    if names == ["identity"] and not parsed.error_feedback:
        return None
    fix = ("set compression.uplink: identity; the field encoding (privacy.secagg.clip and bits) "
           "is the uplink's quantiser, applied before masking")
    sparse = [n for n in names if n in SPARSIFIERS]
    if sparse:
        return (f"compression.uplink {spec!r} sparsifies ({', '.join(sparse)}), which is unsound "
                "with masks: a masked vector is dense and uniformly random, so a sparse update "
                "saves nothing once masked, and sending only some coordinates tells the server "
                f"which ones each client kept; {fix}")
    if parsed.error_feedback:
        return (f"compression.uplink {spec!r} uses error feedback ('ef:'), which keeps each "
                "client's residual of a lossy codec whose output the server decodes update by "
                "update; under secure aggregation no individual update is ever decoded; " + fix)
    return (f"compression.uplink {spec!r} would encode the update before masking, but masks add "
            "in a finite field and need field integers: the sound composition is quantisation "
            f"into the field, then masking; {fix}")


def _check_secagg(s: Scenario) -> None:
    """What ``privacy.secagg`` needs from the rest of the scenario (one clear error each)."""
    if s.privacy.secagg is None:
        return
    from fedkit.scenario.check import per_round
    from fedkit.secure.graph import degree_for, threshold_for

    sa = s.privacy.secagg
    problem = _uplink_problem(s.compression.uplink)
    if problem:
        raise ValueError(f"privacy.secagg: {problem}")
    name = str(s.strategy["name"])
    if ":" not in name and name not in MEAN_STRATEGIES:
        raise ValueError(
            f"privacy.secagg: strategy {name!r} needs each client's update, but secure aggregation "
            f"gives the server only their sum; use one of {', '.join(MEAN_STRATEGIES)}")
    from fedkit.scenario.attacks import COLLUDING

    colluding = sorted({a.kind for a in s.attacks if a.kind in COLLUDING})
    if colluding:
        raise ValueError(f"privacy.secagg: attacks {', '.join(colluding)} are simulated where the server sees "
                         "each update, which secure aggregation hides; drop the attack or the secagg section")
    if s.split is not None:
        raise ValueError("privacy.secagg does not apply to split learning (the server trains on "
                         "each client's activations); drop the split or the secagg section")
    if s.server.on_too_few == "retry":
        raise ValueError("privacy.secagg: a round cannot take in more clients once their keys are "
                         "shared; set server.on_too_few: skip")
    if s.clients.per_round.poisson:
        raise ValueError("privacy.secagg: the field is sized for a fixed number of clients per round, and "
                         "Poisson sampling's count varies (a larger round could wrap the sum); drop "
                         "clients.per_round.poisson")
    n = per_round(s)
    if n < 2:
        raise ValueError(f"privacy.secagg needs at least 2 clients per round (a sum of one is that "
                         f"client's update); clients.per_round gives {n}")
    if sa.degree is not None and sa.degree > n - 1:
        raise ValueError(f"privacy.secagg.degree {sa.degree} exceeds n - 1 = {n - 1} for the {n} "
                         "clients a round samples")
    k = n - 1 if sa.complete else min(sa.degree or degree_for(n), n - 1)
    t = sa.threshold or threshold_for(k)
    if t > k:
        raise ValueError(f"privacy.secagg.threshold {t} exceeds the {k} neighbours each of the {n} "
                         "clients a round samples has")
    if sa.min_survivors is not None and sa.min_survivors > n:
        raise ValueError(f"privacy.secagg.min_survivors {sa.min_survivors} exceeds the {n} clients "
                         "a round samples")
    if sa.max_weight > sa.levels(n):
        raise ValueError(f"privacy.secagg.max_weight {sa.max_weight} exceeds the {sa.levels(n)} "
                         f"levels a {sa.bits}-bit field has for {n} clients; use bits: 64 or a "
                         "smaller max_weight")


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


def _check_dp(s: Scenario) -> None:
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
    from fedkit.runtime.async_policy import is_async

    if is_async(name):
        raise ValueError(f"privacy.dp: strategy {name!r} is asynchronous, so a fast client can send several "
                         "updates between two aggregations, and the accountant counts one per client and round; "
                         "use a synchronous strategy")
    if dp.mode == "central" and s.server.over_select > 1:
        raise ValueError(f"privacy.dp: server.over_select {s.server.over_select:g} trains more clients than the "
                         "round's sample and keeps the fastest, so a client's chance to take part exceeds the q "
                         "the accountant uses; drop over_select")
    if dp.mode == "central" and name not in MEAN_STRATEGIES:
        raise ValueError(
            f"privacy.dp: strategy {name!r} does not average the updates, so noise calibrated to the mean's "
            f"sensitivity (clip_norm / clients per round) would not cover it; use one of {', '.join(MEAN_STRATEGIES)} "
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
