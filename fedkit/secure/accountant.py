"""Privacy accounting for DP-FedAvg rounds, by Google's ``dp-accounting`` library.

References:
- Mironov, "Rényi Differential Privacy", CSF 2017; Mironov, Talwar, Zhang, "Rényi Differential
  Privacy of the Sampled Gaussian Mechanism", arXiv 1908.10530, 2019 (``method="rdp"``).
- Koskela, Jälkö, Honkela, "Computing Tight Differential Privacy Guarantees Using FFT", AISTATS
  2020; Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots: Tighter Discrete
  Approximations of Privacy Loss Distributions", PETS 2022 (``method="pld"``).

One round of DP-FedAvg is a sampled Gaussian mechanism with noise multiplier ``z``: each client
takes part with probability ``q``. ``sampling="poisson"`` (each client flips its own coin) is
what the guarantee of McMahan et al. assumes, under add-or-remove-one-client adjacency.
``sampling="fixed"`` (exactly ``q * population`` clients drawn without replacement, what a
"per_round: count" scenario does) is accounted under replace-one adjacency, which dp-accounting
supports with RDP only; its ε is roughly twice the Poisson one at the same ``q`` because
replacing a client is two add/remove steps.

RDP is fast and conservative (loose at tiny ``q`` and ``delta``); PLD is tight and slower.
Report PLD, check with RDP. ``dp-accounting`` is an optional extra (``pip install
fedkit[privacy]``); it is imported on first use.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fedkit.aggregation.base import check_int, check_real


class _QuietOrders(logging.Filter):
    """dp-accounting logs a warning for every fractional RDP order whose series does not
    converge (it then leaves that order out, which is safe); one run would print dozens."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietOrders())

Method = Literal["rdp", "pld"]
Sampling = Literal["poisson", "fixed"]
METHODS: tuple[str, ...] = ("rdp", "pld")
SAMPLINGS: tuple[str, ...] = ("poisson", "fixed")


def _lib() -> Any:
    try:
        import dp_accounting
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError(
            "privacy accounting needs the 'dp-accounting' package: pip install 'fedkit[privacy]'"
        ) from None
    return dp_accounting


def _fixed_sample(q: float, population: int | None) -> int:
    if population is None:
        raise ValueError("sampling='fixed' needs population (the number of clients)")
    n = check_int("population", population, lo=1)
    m = round(q * n)
    if m < 1 or abs(m - q * n) > 1e-6 * n:
        raise ValueError(f"sampling='fixed': q * population = {q * n:g} is not a whole number")
    return m


def dp_event(
    noise_multiplier: float,
    q: float,
    rounds: int,
    *,
    sampling: Sampling = "poisson",
    population: int | None = None,
) -> Any:
    """The ``dp_accounting.DpEvent`` of ``rounds`` sampled Gaussian rounds (``rounds >= 1``)."""
    lib = _lib()
    z = check_real("noise_multiplier", noise_multiplier, lo=0.0, lo_open=True)
    q = check_real("q", q, lo=0.0, hi=1.0, lo_open=True)
    t = check_int("rounds", rounds, lo=1)
    gauss = lib.GaussianDpEvent(z)
    if sampling == "poisson":
        one = lib.PoissonSampledDpEvent(q, gauss)
    elif sampling == "fixed":
        one = lib.SampledWithoutReplacementDpEvent(population, _fixed_sample(q, population), gauss)
    else:
        raise ValueError(f"unknown sampling {sampling!r}; known: {', '.join(SAMPLINGS)}")
    return lib.SelfComposedDpEvent(one, t)


def _accountant(method: str, sampling: str) -> Any:
    lib = _lib()
    rel = lib.NeighboringRelation
    if method == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        relation = rel.REPLACE_ONE if sampling == "fixed" else rel.ADD_OR_REMOVE_ONE
        return rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    if method == "pld":
        if sampling == "fixed":
            raise ValueError(
                "method='pld' cannot account fixed-size sampling (dp-accounting has no PLD for "
                "sampling without replacement); use method='rdp' or sampling='poisson'"
            )
        from dp_accounting.pld import pld_privacy_accountant

        return pld_privacy_accountant.PLDAccountant()
    raise ValueError(f"unknown accounting method {method!r}; known: {', '.join(METHODS)}")


def epsilon_curve(
    noise_multiplier: float,
    q: float,
    rounds: int,
    delta: float,
    *,
    method: Method = "rdp",
    sampling: Sampling = "poisson",
    population: int | None = None,
) -> tuple[float, ...]:
    """ε at ``delta`` after each of rounds ``1..rounds``: what a run logs round by round.

    One pass instead of ``rounds`` calls of :func:`epsilon`: RDP composes linearly, so the
    RDP vector of ``t`` rounds is ``t`` times that of one round, read from the library's
    accountant after composing one round (exactly the sum the accountant would form);
    PLD composes the one-round privacy loss distribution round after round (the library's
    ``compose``; equal to its ``self_compose`` up to discretisation, ~1e-10 relative).
    """
    check_real("delta", delta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    t = check_int("rounds", rounds, lo=1)
    acc = _accountant(method, sampling)
    one = dp_event(noise_multiplier, q, 1, sampling=sampling, population=population)
    if method == "rdp":
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        acc.compose(one)
        orders, rdp1 = acc._orders, acc._rdp  # dp-accounting 0.6: the accountant's own state
        return tuple(float(compute_epsilon(orders, k * rdp1, delta)[0]) for k in range(1, t + 1))
    from dp_accounting.pld import privacy_loss_distribution as pld

    step = pld.from_gaussian_mechanism(
        standard_deviation=float(noise_multiplier),
        sampling_prob=float(q),
        value_discretization_interval=acc._value_discretization_interval,
    )
    out, cur = [], step
    for k in range(1, t + 1):
        if k > 1:
            cur = cur.compose(step)
        out.append(float(cur.get_epsilon_for_delta(delta)))
    return tuple(out)


def epsilon(
    noise_multiplier: float,
    q: float,
    rounds: int,
    delta: float,
    *,
    method: Method = "rdp",
    sampling: Sampling = "poisson",
    population: int | None = None,
) -> float:
    """ε at ``delta`` after ``rounds`` DP-FedAvg rounds (0 after none).

    ``q`` is the per-round client sampling probability (``sampled / population``);
    ``population`` is needed only for ``sampling="fixed"``.

    >>> round(epsilon(1.0, 100 / 3400, 1500, 1e-5), 3)
    8.159
    """
    check_real("delta", delta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    acc = _accountant(method, sampling)  # validates method before the cheap exit
    if check_int("rounds", rounds, lo=0) == 0:
        return 0.0
    acc.compose(dp_event(noise_multiplier, q, rounds, sampling=sampling, population=population))
    return float(acc.get_epsilon(delta))


def noise_for_epsilon(
    target_epsilon: float,
    q: float,
    rounds: int,
    delta: float,
    *,
    method: Method = "rdp",
    sampling: Sampling = "poisson",
    population: int | None = None,
    rtol: float = 1e-3,
) -> float:
    """The smallest noise multiplier (to ``rtol``) whose run stays within ``target_epsilon``.

    Bisection on ``z``, since ε falls as ``z`` grows; the returned ``z`` is the upper end of
    the final bracket, so ``epsilon(z, ...) <= target_epsilon`` always holds.
    """
    target = check_real("target_epsilon", target_epsilon, lo=0.0, lo_open=True)
    check_real("rtol", rtol, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_int("rounds", rounds, lo=1)

    def eps(z: float) -> float:
        return epsilon(z, q, rounds, delta, method=method, sampling=sampling, population=population)

    hi = 1.0
    if eps(hi) > target:
        while eps(hi) > target:
            if hi >= 1e4:
                raise ValueError(f"no noise multiplier up to 1e4 reaches epsilon {target:g}")
            hi *= 2.0
        lo = hi / 2.0
    else:
        lo = hi / 2.0
        while eps(lo) <= target:
            if lo <= 1e-3:
                return lo  # so little noise already suffices; no finer answer is useful
            hi, lo = lo, lo / 2.0
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
