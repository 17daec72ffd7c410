"""DP clipping, central and local noise calibration, adaptive clipping."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import fedkit.secure.dp
from fedkit.secure.dp import (
    AdaptiveClip,
    ClipState,
    central_std,
    clip,
    dp_mean,
    global_norm,
    local_noise,
    unclipped_bit,
)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(fedkit.secure.dp).failed == 0


def test_clip_scales_to_the_bound_over_all_arrays() -> None:
    delta = [np.array([3.0], np.float32), np.array([[4.0]], np.float32)]  # norm 5
    out, norm = clip(delta, 2.0)
    assert norm == 5.0
    assert [a.dtype for a in out] == [np.float32, np.float32]
    np.testing.assert_allclose(out[0], [1.2], rtol=1e-6)
    np.testing.assert_allclose(out[1], [[1.6]], rtol=1e-6)
    assert global_norm(out) == pytest.approx(2.0, rel=1e-6)


def test_clip_leaves_small_updates_alone_and_bounds_every_norm() -> None:
    small = [np.array([0.3, -0.4])]
    out, norm = clip(small, 1.0)
    np.testing.assert_array_equal(out[0], small[0])
    assert norm == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    for scale in (1e-3, 1.0, 1e3):
        d = [rng.normal(size=(4, 5)) * scale, rng.normal(size=7) * scale]
        assert global_norm(clip(d, 0.7)[0]) <= 0.7 * (1 + 1e-12)


def test_clip_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="clip_norm must be in \\(0, inf\\]"):
        clip([np.ones(2)], 0.0)
    with pytest.raises(ValueError, match="non-finite norm"):
        clip([np.array([1.0, np.nan])], 1.0)
    with pytest.raises(ValueError, match="dtype int64; DP needs floats"):
        clip([np.array([1, 2])], 1.0)


def test_dp_mean_without_noise_is_the_fixed_denominator_average_of_clipped_updates() -> None:
    deltas = [[np.array([3.0, 4.0])], [np.array([0.2, 0.0])]]  # first clipped to [0.6, 0.8]
    out = dp_mean(deltas, clip_norm=1.0, noise_multiplier=0.0, expected_clients=4, seed=0, round=0)
    np.testing.assert_allclose(out[0], [0.8 / 4, 0.8 / 4])  # divided by 4 asked, not 2 replied


def test_central_noise_std_matches_the_calibration() -> None:
    z, c, n, d = 1.3, 0.5, 10, 200_000
    assert central_std(z, c, n) == pytest.approx(0.065)
    zeros = [[np.zeros(d)] for _ in range(3)]
    out = dp_mean(zeros, clip_norm=c, noise_multiplier=z, expected_clients=n, seed=4, round=2)
    assert abs(out[0].mean()) < 5 * 0.065 / math.sqrt(d)
    assert out[0].std() == pytest.approx(0.065, rel=0.01)


def test_central_noise_is_keyed_by_seed_and_round() -> None:
    deltas = [[np.ones(50, np.float32)]]
    kw = {"clip_norm": 1.0, "noise_multiplier": 1.0, "expected_clients": 2}
    a = dp_mean(deltas, seed=1, round=3, **kw)[0]
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, dp_mean(deltas, seed=1, round=3, **kw)[0])
    assert not np.array_equal(a, dp_mean(deltas, seed=1, round=4, **kw)[0])
    assert not np.array_equal(a, dp_mean(deltas, seed=2, round=3, **kw)[0])


def test_dp_mean_rejects_more_updates_than_the_denominator() -> None:
    with pytest.raises(ValueError, match="got 3 updates but expected_clients=2"):
        dp_mean(
            [[np.ones(2)]] * 3, clip_norm=1, noise_multiplier=1, expected_clients=2, seed=0, round=0
        )
    with pytest.raises(ValueError, match="update 1 is not shaped like update 0"):
        dp_mean(
            [[np.ones(2)], [np.ones(3)]],
            clip_norm=1,
            noise_multiplier=1,
            expected_clients=2,
            seed=0,
            round=0,
        )


def test_local_noise_is_per_client_with_std_z_times_c() -> None:
    delta = [np.zeros(100_000)]
    a = local_noise(delta, clip_norm=0.5, noise_multiplier=2.0, seed=0, round=1, client="a")[0]
    b = local_noise(delta, clip_norm=0.5, noise_multiplier=2.0, seed=0, round=1, client="b")[0]
    assert a.std() == pytest.approx(1.0, rel=0.02)
    assert not np.array_equal(a, b)
    # the update is clipped before the noise: a huge delta ends up at norm 0.5 plus noise
    big = [np.full(4, 1e6)]
    out = local_noise(big, clip_norm=0.5, noise_multiplier=0.0, seed=0, round=1, client="a")
    assert global_norm(out) == pytest.approx(0.5)


def test_adaptive_clip_geometric_and_arithmetic_steps_by_hand() -> None:
    cfg = AdaptiveClip(expected_clients=4, initial_clip_norm=1.0, count_stddev=0.0)
    state = cfg.init()
    assert state == ClipState(1.0)
    # all four inside: fraction 1 > target 0.5 -> C * exp(-0.2 * 0.5)
    s1, frac = cfg.update(state, [True] * 4, seed=0, round=0)
    assert frac == 1.0
    assert s1.clip_norm == pytest.approx(math.exp(-0.1))
    # one of four inside: fraction 0.25 -> C * exp(+0.2 * 0.25)
    s2, frac = cfg.update(state, [True, False, False, False], seed=0, round=0)
    assert frac == 0.25
    assert s2.clip_norm == pytest.approx(math.exp(0.05))
    arith = AdaptiveClip(4, initial_clip_norm=1.0, count_stddev=0.0, geometric=False, lr=0.4)
    s3, _ = arith.update(arith.init(), [True] * 4, seed=0, round=0)
    assert s3.clip_norm == pytest.approx(1.0 - 0.4 * 0.5)


def test_adaptive_clip_tracks_the_target_quantile() -> None:
    norms = np.linspace(0.01, 1.0, 100)  # the 0.3-quantile is about 0.3
    cfg = AdaptiveClip(expected_clients=100, target_quantile=0.3, lr=0.2)
    state = cfg.init()
    for r in range(300):
        state, _ = cfg.update(
            state, [unclipped_bit(n, state.clip_norm) for n in norms], seed=5, round=r
        )
    assert state.clip_norm == pytest.approx(0.3, abs=0.05)


def test_adaptive_clip_count_noise_is_keyed_and_bounded() -> None:
    cfg = AdaptiveClip(expected_clients=20)  # count std 1
    bits = [True] * 10 + [False] * 10
    _, f1 = cfg.update(cfg.init(), bits, seed=3, round=7)
    _, f2 = cfg.update(cfg.init(), bits, seed=3, round=7)
    _, f3 = cfg.update(cfg.init(), bits, seed=3, round=8)
    assert f1 == f2 != f3
    assert 0.0 <= f1 <= 1.0 and abs(f1 - 0.5) < 0.3


def test_noise_split_composes_to_the_target_multiplier() -> None:
    cfg = AdaptiveClip(expected_clients=100)  # count std 5 -> count multiplier 10
    zd = cfg.update_noise_multiplier(1.0)
    assert zd == pytest.approx((1 - 0.01) ** -0.5)
    assert zd**-2 + 10.0**-2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be below 2 \\* count_stddev = 10"):
        cfg.update_noise_multiplier(10.0)
    with pytest.raises(ValueError, match="target_quantile must be in \\[0, 1\\]"):
        AdaptiveClip(expected_clients=10, target_quantile=1.5)
