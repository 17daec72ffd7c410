"""Scenario schema for ``privacy: {secagg: {...}}`` and what it needs from the rest of a scenario.

Secure aggregation (fedkit/runtime/secagg.py; SecAgg+, Bell et al. CCS 2020) lets the server
learn only the sum of the round's updates. Each client puts ``weight x delta`` into the field:
clipped to [-clip, clip] and rounded stochastically to ``levels = (2^bits - 1) // n`` steps for
the n clients a round samples, so the sum of n inputs cannot wrap. That field encoding *is* the
uplink's quantiser (quantisation before masking is the sound composition); precision is one
step ``2 clip / levels`` per client and value (about 5e-9 x clip for 10 clients at 32 bits).
Compositions that are not sound are refused here, each with the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from fedkit.types import Strict

if TYPE_CHECKING:
    from fedkit.scenario.schema import Scenario

MEAN_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
"""Strategies that reduce by the weighted mean: they apply one combined update as they would
the mean of many. The others (median, trimmed mean, Krum, ..., FedAU's per-client reweighting)
need each client's update, which secure aggregation never shows the server."""

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


class Privacy(Strict):
    """Privacy mechanisms of a scenario."""

    secagg: SecAgg | None = None


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


def check_privacy(s: Scenario) -> None:
    """What the privacy section needs from the rest of the scenario (one clear error each)."""
    if s.privacy is None or s.privacy.secagg is None:
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
    if s.split is not None:
        raise ValueError("privacy.secagg does not apply to split learning (the server trains on "
                         "each client's activations); drop the split or the secagg section")
    if s.server.on_too_few == "retry":
        raise ValueError("privacy.secagg: a round cannot take in more clients once their keys are "
                         "shared; set server.on_too_few: skip")
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
