"""Attack simulators: who attacks, what they send, and what honest clients keep."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import fedkit.attacks
from fedkit.aggregation import median
from fedkit.attacks import (
    GaussianNoise,
    LittleIsEnough,
    Scaling,
    SignFlip,
    alie_z,
    assign_malicious,
    choose_malicious,
    flip_labels,
    make_attack,
)
from fedkit.types import Update

NAMES = [f"c{i:02d}" for i in range(20)]


def updates(*vectors: list[float], dtype: type = np.float64) -> list[Update]:
    return [Update(f"c{i:02d}", [np.asarray(v, dtype)], 5) for i, v in enumerate(vectors)]


def test_docstring_examples_run() -> None:
    assert doctest.testmod(fedkit.attacks).failed == 0


def test_choose_malicious_is_seeded_sized_and_order_free() -> None:
    bad = choose_malicious(NAMES, 0.3, seed=7)
    assert len(bad) == 6 and bad <= set(NAMES)
    assert bad == choose_malicious(list(reversed(NAMES)), 0.3, seed=7)
    assert bad != choose_malicious(NAMES, 0.3, seed=8)
    assert len(choose_malicious(NAMES, 0.26, seed=7)) == 5  # floor
    assert choose_malicious(NAMES, 0.0, seed=7) == frozenset()
    assert choose_malicious(NAMES, 0.1, seed=7) <= bad  # a prefix of the same draw


def test_assign_malicious_gives_disjoint_sets() -> None:
    a, b = assign_malicious(NAMES, [0.2, 0.3], seed=1)
    assert len(a) == 4 and len(b) == 6 and not a & b
    with pytest.raises(ValueError, match="add up to more than all 20 clients"):
        assign_malicious(NAMES, [0.6, 0.5], seed=1)
    with pytest.raises(ValueError, match="must be unique"):
        choose_malicious(["a", "a"], 0.5, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        choose_malicious(NAMES, 1.5, seed=0)


def test_sign_flip_and_scaling_touch_only_malicious_clients() -> None:
    ups = updates([1.0, 2.0], [3.0, -1.0], [0.5, 0.5], dtype=np.float32)
    out = SignFlip(2.0)(ups, {"c01"}, seed=0, round=0)
    assert out[0] is ups[0] and out[2] is ups[2]
    assert out[1].delta[0].dtype == np.float32 and out[1].num_examples == 5
    np.testing.assert_array_equal(out[1].delta[0], [-6.0, 2.0])
    out = Scaling()(ups, {"c00", "c02"}, seed=0, round=0)  # factor = 3 updates
    np.testing.assert_array_equal(out[0].delta[0], [3.0, 6.0])
    np.testing.assert_array_equal(out[2].delta[0], [1.5, 1.5])
    np.testing.assert_array_equal(Scaling(10)(ups, {"c01"}, seed=0, round=0)[1].delta[0], [30, -10])
    np.testing.assert_array_equal(ups[1].delta[0], [3.0, -1.0])  # inputs untouched


def test_gaussian_noise_replaces_the_update_and_is_keyed() -> None:
    ups = updates(np.ones(50_000), np.ones(50_000))
    out = GaussianNoise(std=3.0)(ups, {"c00", "c01"}, seed=2, round=4)
    assert out[0].delta[0].std() == pytest.approx(3.0, rel=0.02)
    assert abs(out[0].delta[0].mean()) < 0.1  # noise instead of the update, not added to it
    assert not np.array_equal(out[0].delta[0], out[1].delta[0])  # per client
    again = GaussianNoise(std=3.0)(ups, {"c00"}, seed=2, round=4)
    np.testing.assert_array_equal(again[0].delta[0], out[0].delta[0])
    other = GaussianNoise(std=3.0)(ups, {"c00"}, seed=2, round=5)
    assert not np.array_equal(other[0].delta[0], out[0].delta[0])


def test_alie_z_hand_computed() -> None:
    # n = 50, f = 10: s = floor(26) - 10 = 16 honest to win; Phi^-1(34/50) = 0.4677
    assert alie_z(50, 10) == pytest.approx(0.4677, abs=1e-4)
    with pytest.raises(ValueError, match="no z for n=4, f=4"):
        alie_z(4, 4)


def test_little_is_enough_sends_mean_minus_z_std_of_the_benign_updates() -> None:
    ups = updates([0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [100.0, 100.0])
    out = LittleIsEnough(z=1.0)(ups, {"c03"}, seed=0, round=0)
    # benign x: mean 2, std sqrt(8/3); y: mean 1, std 0
    np.testing.assert_allclose(out[3].delta[0], [2.0 - math.sqrt(8 / 3), 1.0])
    assert all(out[i] is ups[i] for i in range(3))


def test_little_is_enough_shifts_the_median_where_a_big_attack_does_not() -> None:
    rng = np.random.default_rng(0)
    ups = [Update(n, [rng.normal(1.0, 1.0, size=2000)], 1) for n in NAMES]
    bad = choose_malicious(NAMES, 0.3, seed=0)
    honest_median = median([u for u in ups if u.client not in bad])[0].mean()
    alie = median(LittleIsEnough()(ups, bad, seed=0, round=0))[0].mean()
    flipped = median(SignFlip(100.0)(ups, bad, seed=0, round=0))[0].mean()
    # the in-distribution vectors drag the median down more than 100x outliers do
    assert honest_median - alie > honest_median - flipped > 0


def test_flip_labels() -> None:
    y = np.array([0, 3, 9, 5], np.int64)
    np.testing.assert_array_equal(flip_labels(y, 10), [9, 6, 0, 4])
    np.testing.assert_array_equal(flip_labels(flip_labels(y, 10), 10), y)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\]"):
        flip_labels(y, 4)
    with pytest.raises(ValueError, match="integer labels"):
        flip_labels(np.array([0.5]), 2)


def test_make_attack_registry_errors() -> None:
    assert make_attack("scaling", factor=5.0) == Scaling(5.0)
    with pytest.raises(ValueError, match="unknown attack 'flip'; known: gaussian, label_flip"):
        make_attack("flip")
    with pytest.raises(ValueError, match="poisons data"):
        make_attack("label_flip")
    with pytest.raises(ValueError, match="attack 'gaussian'.*unexpected keyword"):
        make_attack("gaussian", sigma=1.0)
    with pytest.raises(ValueError, match="factor must be > 0"):
        SignFlip(-1.0)
