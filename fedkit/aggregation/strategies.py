"""Named strategies: each is one reduce function x one server optimizer.

References (see ``reduce.py`` and ``server_opt.py`` for the maths):
- fedavg: McMahan et al., AISTATS 2017.
- fedprox: Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
  Networks", MLSys 2020. The server side is FedAvg; ``mu`` is the client's proximal term
  ``(mu/2)||w - x||^2``, so it is returned by :func:`client_config`, not used here.
- fedavgm: Hsu, Qi, Brown, arXiv 1909.06335, 2019.
- fedadam, fedyogi, fedadagrad: Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
- fedmedian, fedtrimmedavg: Yin et al., ICML 2018.
- krum, multikrum: Blanchard et al., NeurIPS 2017.
- fedau: Wang & Ji, ICLR 2024 (see ``fedau.py``): participants weighted by their estimated
  participation interval, summed over all ``num_clients`` N; ``cutoff`` is the paper's K.
- bulyan, centeredclip, fltrust, normbound: see ``robust.py`` (El Mhamdi et al. 2018,
  Karimireddy et al. 2021, Cao et al. 2021, Sun et al. 2019). ``fltrust`` expects the server's
  root-set update among the updates as client ``robust.ROOT_CLIENT``; in a scenario the engine
  trains it each round on ``root_size`` samples (fedkit/runtime/root_set.py).

Defaults follow Flower's current ``flwr.serverapp.strategy`` signatures where it has them
(FedAdam/FedAdagrad lr=0.1, FedYogi lr=0.01, tau=1e-3, beta1=0.9, beta2=0.99, FedAdagrad
without momentum, FedTrimmedAvg beta=0.2, Krum f=0). Elsewhere: fedavgm momentum=0.9 (Hsu et al.
use 0.9; Flower defaults to 0.0, which is FedAvg), fedprox mu=0.01 (inside the paper's grid; Flower
makes it mandatory), multikrum m=None (keep n - f), fedau lr=1 and no cutoff (the official
code's defaults: eta_g = 1, K = 100000); fedau's ``num_clients`` has no default: the engine or
the scenario must give N; bulyan f=0, centeredclip tau=1.0 with 3 iterations from zero,
normbound max_norm=1.0 (set both to about the honest update norm). Every strategy takes the
server ``lr``.

The asynchronous strategies (fedasync, fedbuff, fedcompass) are not one synchronous step; see
``async_strategies.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fedkit.aggregation.base import Aggregator, check_int, check_real
from fedkit.aggregation.fedau import FedAUReweight
from fedkit.aggregation.reduce import krum, median, sum_over, trimmed_mean, weighted_mean
from fedkit.aggregation.robust import FLTrust, bulyan, centered_clipping, norm_bound
from fedkit.aggregation.server_opt import adagrad, adam, momentum, sgd, yogi
from fedkit.registry import did_you_mean, unknown


@dataclass(frozen=True)
class _Spec:
    defaults: Mapping[str, Any]
    build: Callable[..., Aggregator]
    client_keys: tuple[str, ...] = ()


def _fedprox(lr: float, mu: float) -> Aggregator:
    check_real("mu", mu, lo=0.0)
    return Aggregator(weighted_mean, sgd(lr))


def _fedau(lr: float, num_clients: int | None, cutoff: int | None) -> Aggregator:
    if num_clients is None:
        raise ValueError("fedau needs num_clients, the total number N of clients it divides by")
    rw = FedAUReweight(cutoff, num_clients)
    return Aggregator(sum_over(num_clients), sgd(lr), reweight=rw)


def _fltrust(lr: float, root_size: int) -> Aggregator:
    check_int("root_size", root_size, lo=1)  # the engine draws the root set (runtime/root_set.py)
    return Aggregator(FLTrust(), sgd(lr))


_SPECS: dict[str, _Spec] = {
    "fedavg": _Spec({"lr": 1.0}, lambda lr: Aggregator(weighted_mean, sgd(lr))),
    "fedprox": _Spec({"lr": 1.0, "mu": 0.01}, _fedprox, client_keys=("mu",)),
    "fedavgm": _Spec(
        {"lr": 1.0, "momentum": 0.9, "nesterov": False},
        lambda **p: Aggregator(weighted_mean, momentum(**p)),
    ),
    "fedadam": _Spec(
        {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "v0": 0.0},
        lambda **p: Aggregator(weighted_mean, adam(**p)),
    ),
    "fedyogi": _Spec(
        {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "v0": 0.0},
        lambda **p: Aggregator(weighted_mean, yogi(**p)),
    ),
    "fedadagrad": _Spec(
        {"lr": 0.1, "beta1": 0.0, "tau": 1e-3, "v0": 0.0},
        lambda **p: Aggregator(weighted_mean, adagrad(**p)),
    ),
    "fedmedian": _Spec({"lr": 1.0}, lambda lr: Aggregator(median, sgd(lr))),
    "fedtrimmedavg": _Spec(
        {"beta": 0.2, "lr": 1.0}, lambda beta, lr: Aggregator(trimmed_mean(beta), sgd(lr))
    ),
    "krum": _Spec({"f": 0, "lr": 1.0}, lambda f, lr: Aggregator(krum(f, m=1), sgd(lr))),
    "multikrum": _Spec(
        {"f": 0, "m": None, "lr": 1.0}, lambda f, m, lr: Aggregator(krum(f, m), sgd(lr))
    ),
    "fedau": _Spec({"lr": 1.0, "num_clients": None, "cutoff": None}, _fedau),
    "bulyan": _Spec({"f": 0, "lr": 1.0}, lambda f, lr: Aggregator(bulyan(f), sgd(lr))),
    "centeredclip": _Spec(
        {"tau": 1.0, "iters": 3, "lr": 1.0},
        lambda tau, iters, lr: Aggregator(centered_clipping(tau, iters), sgd(lr)),
    ),
    "fltrust": _Spec({"lr": 1.0, "root_size": 100}, _fltrust),
    "normbound": _Spec(
        {"max_norm": 1.0, "lr": 1.0}, lambda max_norm, lr: Aggregator(norm_bound(max_norm), sgd(lr))
    ),
}

STRATEGIES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(dict(spec.defaults)) for name, spec in _SPECS.items()}
)
"""Strategy name -> its parameters and their defaults (read-only)."""


def _resolve(name: str, params: Mapping[str, Any]) -> tuple[_Spec, dict[str, Any]]:
    """Look up ``name``, merge ``params`` over its defaults, and check they build."""
    if name not in _SPECS:
        raise unknown("strategy", name, _SPECS)
    spec = _SPECS[name]
    allowed = list(spec.defaults)
    for key in params:
        if key not in spec.defaults:
            raise ValueError(
                f"strategy {name!r} has no parameter {key!r}{did_you_mean(key, allowed)}; "
                f"allowed: {', '.join(allowed) if allowed else 'none'}"
            )
    return spec, {**spec.defaults, **params}


def make_aggregator(name: str, **params: Any) -> Aggregator:
    """Build a named strategy, e.g. ``make_aggregator("fedadam", lr=0.01)``.

    Unknown names, unknown parameters and invalid values raise ValueError saying what is allowed.
    """
    spec, full = _resolve(name, params)
    try:
        return spec.build(**full)
    except ValueError as e:
        raise ValueError(f"strategy {name!r}: {e}") from None


def client_config(name: str, **params: Any) -> dict[str, Any]:
    """What the engine must send clients for this strategy (FedProx: ``{"mu": ...}``).

    Takes the same arguments as :func:`make_aggregator` and validates them the same way.
    """
    make_aggregator(name, **params)
    spec, full = _resolve(name, params)
    return {key: full[key] for key in spec.client_keys}
