"""The central DP-FedAvg server step: fixed denominator, calibrated noise, adaptive clip norm,
keyed noise that a checkpoint/resume reproduces."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fedkit.secure.dp_aggregator
from fedkit.aggregation import adam, sgd, state_from_arrays, state_to_arrays
from fedkit.secure.dp import AdaptiveClip, global_norm
from fedkit.secure.dp_aggregator import UNCLIPPED, DpFedAvg
from fedkit.types import Update


def test_docstring_examples_run() -> None:
    assert doctest.testmod(fedkit.secure.dp_aggregator).failed == 0


def _ups(deltas: list[np.ndarray], bits: list[float] | None = None) -> list[Update]:
    return [
        Update(f"c{i}", [d], 1, {} if bits is None else {UNCLIPPED: bits[i]}) for i, d in enumerate(deltas)
    ]


def test_without_noise_the_step_is_the_fixed_denominator_mean_of_clipped_updates() -> None:
    agg = DpFedAvg(sgd(0.5), noise_multiplier=0.0, clip_norm=1.0, expected_clients=5, seed=0)
    x = [np.ones(2)]
    ups = _ups([np.array([30.0, 40.0]), np.array([0.1, 0.0])])  # the first clipped to [0.6, 0.8]
    _, y = agg.step(agg.init(x), x, ups)
    np.testing.assert_allclose(y[0], 1.0 + 0.5 * np.array([0.7, 0.8]) / 5)


def test_noise_std_over_many_draws_matches_z_c_over_n() -> None:
    z, c, n, d = 1.7, 0.4, 8, 50_000
    agg = DpFedAvg(sgd(1.0), noise_multiplier=z, clip_norm=c, expected_clients=n, seed=11)
    x = [np.zeros(d)]
    state, draws = agg.init(x), []
    for _ in range(4):  # four releases: four independent keyed draws
        state, y = agg.step(state, x, _ups([np.zeros(d)] * 3))
        draws.append(y[0])
    flat = np.concatenate(draws)
    assert flat.std() == pytest.approx(z * c / n, rel=0.01)
    assert abs(flat.mean()) < 5 * z * c / n / np.sqrt(flat.size)
    assert agg.released(state)["dp_noise_std"] == pytest.approx(z * c / n)
    assert not np.array_equal(draws[0], draws[1])


def test_poisson_denominator_may_be_exceeded_but_fixed_may_not() -> None:
    x = [np.zeros(3)]
    five = _ups([np.ones(3)] * 5)
    poisson = DpFedAvg(sgd(1.0), 0.0, 10.0, expected_clients=2.5, seed=0, poisson=True)
    _, y = poisson.step(poisson.init(x), x, five)
    np.testing.assert_allclose(y[0], 5 / 2.5)
    fixed = DpFedAvg(sgd(1.0), 0.0, 10.0, expected_clients=4, seed=0)
    with pytest.raises(ValueError, match="got 5 updates but expected_clients=4"):
        fixed.step(fixed.init(x), x, five)


def test_adaptive_clip_norm_follows_the_reported_bits_into_the_next_round() -> None:
    ad = AdaptiveClip(expected_clients=4, initial_clip_norm=1.0, count_stddev=0.0)
    agg = DpFedAvg(sgd(1.0), 0.0, 1.0, expected_clients=4, seed=0, adaptive=ad)
    x = [np.zeros(2)]
    s0 = agg.init(x)
    assert agg.clip_for_next(s0) == 1.0
    s1, _ = agg.step(s0, x, _ups([np.ones(2)] * 4, bits=[1.0, 1.0, 1.0, 1.0]))  # all fit: shrink
    assert agg.clip_for_next(s1) == pytest.approx(np.exp(-0.2 * 0.5))
    assert agg.released(s1) == pytest.approx({"dp_clip_norm": 1.0, "dp_noise_std": 0.0, "dp_unclipped_frac": 1.0})
    s2, _ = agg.step(s1, x, _ups([np.ones(2)] * 4))  # nobody reported: counted as clipped, grow
    assert agg.clip_for_next(s2) > agg.clip_for_next(s1)
    assert agg.released(s2)["dp_clip_norm"] == agg.clip_for_next(s1)


def test_noise_is_keyed_so_a_checkpointed_state_resumes_the_same_draws() -> None:
    agg = DpFedAvg(adam(0.1), noise_multiplier=1.0, clip_norm=1.0, expected_clients=3, seed=5,
                   adaptive=AdaptiveClip(expected_clients=3, count_stddev=1.0))
    x = [np.zeros(6, np.float32)]
    rng = np.random.default_rng(0)
    rounds = [_ups([rng.normal(size=6).astype(np.float32) for _ in range(3)], [1.0, 0.0, 1.0]) for _ in range(4)]
    state, straight = agg.init(x), x
    for ups in rounds:
        state, straight = agg.step(state, straight, ups)
    state, part = agg.init(x), x
    for ups in rounds[:2]:
        state, part = agg.step(state, part, ups)
    state = state_from_arrays(state_to_arrays(state))  # what the checkpoint holds
    for ups in rounds[2:]:
        state, part = agg.step(state, part, ups)
    np.testing.assert_array_equal(part[0], straight[0])
    assert part[0].dtype == np.float32
    other = DpFedAvg(adam(0.1), 1.0, 1.0, 3, seed=6, adaptive=AdaptiveClip(expected_clients=3, count_stddev=1.0))
    s, y = other.step(other.init(x), x, rounds[0])
    assert not np.array_equal(y[0], agg.step(agg.init(x), x, rounds[0])[1][0])
    assert global_norm(y) > 0
