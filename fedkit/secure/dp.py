"""Differential privacy for federated averaging: clip, noise, adaptive clip norm.

References:
- McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language Models",
  ICLR 2018 (DP-FedAvg): clip each client delta to L2 norm ``C``, average with a *fixed*
  denominator, add Gaussian noise of std ``z * C / n`` to the average.
- Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
  Clipping", NeurIPS 2021 (arXiv 1905.03871): track a quantile of the update norms with a
  noised count of unclipped clients; the noise multiplier is split between the two releases.

Where each piece runs: :func:`clip` (and, for local DP, :func:`local_noise`) is client
middleware; :func:`dp_mean` is the server step; :class:`AdaptiveClip` is server state that sets
next round's ``clip_norm`` from the clients' one-bit reports (:func:`unclipped_bit`).

Why a fixed denominator: the server divides the clipped sum by ``n``, the number of clients it
*asked* this round (``expected_clients``), not by the number that replied. One client then moves
the average by at most ``C / n`` whatever the others do, so noise of std ``z * C / n`` gives the
noise multiplier ``z`` the accountant assumes; dividing by the random reply count would make the
sensitivity depend on who answered. Dropouts bias the average towards zero instead (by the
fraction missing), which is the price of the guarantee.

Noise is keyed by ``(seed, "dp-noise", round)`` on the server and ``(seed, "dp-local", round,
client)`` on a client, so a resumed run redraws exactly the same noise. Privacy is user-level:
a client's whole update is the unit protected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkit import rng as frng
from fedkit.aggregation.base import cast_like, check_real
from fedkit.types import ClientId, Params

_F64 = np.float64


def global_norm(delta: Params) -> float:
    """L2 norm of all arrays taken together (flat clipping, as in DP-FedAvg)."""
    if len(delta) == 0:
        raise ValueError("cannot take the norm of an update with no arrays")
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=_F64)))) for a in delta))


def _check_float(delta: Params, what: str) -> None:
    for k, a in enumerate(delta):
        if not np.issubdtype(np.asarray(a).dtype, np.floating):
            raise ValueError(f"{what}: array {k} has dtype {np.asarray(a).dtype}; DP needs floats")


def clip(delta: Params, clip_norm: float) -> tuple[Params, float]:
    """Scale ``delta`` by ``min(1, clip_norm / ||delta||)``; return it and the norm *before*.

    The returned norm is what adaptive clipping's one-bit report is computed from.

    >>> import numpy as np
    >>> out, norm = clip([np.array([3.0, 4.0])], 1.0)
    >>> norm, out[0]
    (5.0, array([0.6, 0.8]))
    """
    c = check_real("clip_norm", clip_norm, lo=0.0, lo_open=True)
    _check_float(delta, "clip")
    norm = global_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("clip: update has a non-finite norm (NaN or inf in the delta)")
    scale = 1.0 if norm <= c else c / norm
    out = [cast_like(np.asarray(a, dtype=_F64) * scale, np.asarray(a).dtype) for a in delta]
    return out, norm


def unclipped_bit(norm: float, clip_norm: float) -> bool:
    """A client's adaptive-clipping report: was its update inside the clip norm?"""
    return norm <= clip_norm


def add_gaussian(delta: Params, std: float, gen: np.random.Generator) -> Params:
    """``delta + N(0, std^2 I)``, drawn array by array in order from ``gen``."""
    s = check_real("std", std, lo=0.0)
    _check_float(delta, "noise")
    out: Params = []
    for a in delta:
        a = np.asarray(a)
        noise = gen.normal(0.0, s, size=a.shape) if s > 0 else np.zeros(a.shape)
        out.append(cast_like(a.astype(_F64) + noise, a.dtype))
    return out


def central_std(noise_multiplier: float, clip_norm: float, expected_clients: float) -> float:
    """Std of the server's noise on the fixed-denominator average: ``z * C / n``."""
    z = check_real("noise_multiplier", noise_multiplier, lo=0.0)
    c = check_real("clip_norm", clip_norm, lo=0.0, lo_open=True)
    n = check_real("expected_clients", expected_clients, lo=0.0, lo_open=True)
    return z * c / n


def dp_mean(
    deltas: Sequence[Params],
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: float,
    seed: int,
    round: int,
    poisson: bool = False,
) -> Params:
    """Central DP-FedAvg server step: ``sum_k clip(delta_k) / n + N(0, (z C / n)^2 I)``.

    Every client counts once (weighting by self-reported example counts would need a weight
    bound in the sensitivity). Updates are clipped again here: clients should already have
    clipped, re-clipping a clipped update changes nothing, and it keeps the guarantee if a
    client did not. ``n = expected_clients`` is the number of clients sampled (see the module
    docstring for why it is fixed); more replies than that is an error. With ``poisson``
    sampling ``n`` is ``q * population``, the *expected* count (McMahan et al.'s ``qW``): the
    count of replies is random then and may exceed it.
    """
    std = central_std(noise_multiplier, clip_norm, expected_clients)
    if len(deltas) == 0:
        raise ValueError("dp_mean needs at least one update")
    if not poisson and len(deltas) > expected_clients:
        raise ValueError(
            f"dp_mean got {len(deltas)} updates but expected_clients={expected_clients:g}; "
            "the denominator must be at least the number of contributions"
        )
    first = deltas[0]
    acc = [np.zeros(np.shape(a), dtype=_F64) for a in first]
    for i, d in enumerate(deltas):
        if len(d) != len(first) or any(
            np.shape(a) != np.shape(b) for a, b in zip(d, first, strict=True)
        ):
            raise ValueError(f"dp_mean: update {i} is not shaped like update 0")
        clipped, _ = clip(d, clip_norm)
        for k, a in enumerate(clipped):
            acc[k] += np.asarray(a, dtype=_F64)
    avg = [a / float(expected_clients) for a in acc]
    noised = add_gaussian(avg, std, frng.rng(seed, "dp-noise", round))
    return [cast_like(a, np.asarray(f).dtype) for a, f in zip(noised, first, strict=True)]


def local_noise(
    delta: Params,
    *,
    clip_norm: float,
    noise_multiplier: float,
    seed: int,
    round: int,
    client: ClientId,
) -> Params:
    """Local DP: clip, then add ``N(0, (z C)^2 I)`` on the client before anything is sent.

    The server need not be trusted; each client's release is a Gaussian mechanism with noise
    multiplier ``z`` on its own (account it with ``q = 1`` per round it takes part in). The
    server's plain mean over ``m`` clients then carries noise of std ``z C / sqrt(m)``: local
    DP needs far more clients than central DP for the same utility.
    """
    z = check_real("noise_multiplier", noise_multiplier, lo=0.0)
    clipped, _ = clip(delta, clip_norm)
    return add_gaussian(clipped, z * float(clip_norm), frng.rng(seed, "dp-local", round, client))


@dataclass(frozen=True)
class ClipState:
    """Adaptive clipping state: this round's clip norm (one float; checkpoint it as such)."""

    clip_norm: float


@dataclass(frozen=True)
class AdaptiveClip:
    """Quantile-tracking clip norm (Andrew et al. 2021), as a config with ``init``/``update``.

    Each round clients report ``unclipped_bit(norm, C)``. The server releases the noised
    fraction ``b = (sum(bit - 1/2) + N(0, count_stddev^2)) / expected_clients + 1/2``, clipped
    to [0, 1], and moves ``C`` towards the ``target_quantile`` of the norms:
    geometric ``C * exp(-lr * (b - target))`` (default) or arithmetic ``C - lr * (b - target)``.
    If more than ``target_quantile`` of the clients fit inside ``C``, ``C`` shrinks.

    Tuning: the defaults are the paper's (``C0 = 0.1``, target 0.5, ``lr = 0.2``,
    ``count_stddev = expected_clients / 20``). The count release costs privacy too; keep the
    total noise multiplier ``z`` by noising the update with :meth:`update_noise_multiplier`.
    """

    expected_clients: float
    initial_clip_norm: float = 0.1
    target_quantile: float = 0.5
    lr: float = 0.2
    count_stddev: float | None = None
    geometric: bool = True
    poisson: bool = False  # expected_clients is q * population; more bits than it may come

    def __post_init__(self) -> None:
        check_real("expected_clients", self.expected_clients, lo=0.0, lo_open=True)
        check_real("initial_clip_norm", self.initial_clip_norm, lo=0.0, lo_open=True)
        check_real("target_quantile", self.target_quantile, lo=0.0, hi=1.0)
        check_real("lr", self.lr, lo=0.0, lo_open=True)
        if self.count_stddev is not None:
            check_real("count_stddev", self.count_stddev, lo=0.0)

    @property
    def stddev(self) -> float:
        """Std of the noise on the summed bits (default ``expected_clients / 20``)."""
        return self.expected_clients / 20.0 if self.count_stddev is None else self.count_stddev

    def init(self) -> ClipState:
        return ClipState(float(self.initial_clip_norm))

    def update(
        self, state: ClipState, unclipped: Sequence[bool], *, seed: int, round: int
    ) -> tuple[ClipState, float]:
        """Next round's state and the released (noised) unclipped fraction."""
        if not self.poisson and len(unclipped) > self.expected_clients:
            raise ValueError(
                f"adaptive clip got {len(unclipped)} bits, "
                f"expected_clients={self.expected_clients:g}"
            )
        centred = sum(1.0 if b else 0.0 for b in unclipped) - 0.5 * len(unclipped)
        noise = float(frng.rng(seed, "dp-clip-count", round).normal(0.0, self.stddev))
        frac = min(1.0, max(0.0, (centred + noise) / self.expected_clients + 0.5))
        err = frac - self.target_quantile
        if self.geometric:
            c = state.clip_norm * math.exp(-self.lr * err)
        else:
            c = max(0.0, state.clip_norm - self.lr * err)
        return ClipState(c), frac

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """The update's noise multiplier ``z_d`` so that it and the count compose to ``z``.

        Both are Gaussian mechanisms; the bits have sensitivity 1/2, so the count's multiplier
        is ``2 * count_stddev`` and ``z^-2 = z_d^-2 + (2 count_stddev)^-2``.
        """
        z = check_real("noise_multiplier", noise_multiplier, lo=0.0, lo_open=True)
        zb = 2.0 * self.stddev
        if zb == 0.0 or z >= zb:
            raise ValueError(
                f"noise_multiplier {z:g} must be below 2 * count_stddev = {zb:g}: the clipped "
                "count alone would use the whole privacy budget"
            )
        return (z**-2 - zb**-2) ** -0.5
