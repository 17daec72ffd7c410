"""Reducers against hand-computed values, outlier rejection, determinism and errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.aggregation import krum, mean, median, sum_over, trimmed_mean, weighted_mean
from fedkit.types import Update


def up(client: str, *arrays: list[float] | np.ndarray, n: int = 1) -> Update:
    return Update(client, [np.asarray(a, dtype=np.float64) for a in arrays], n)


def scalars(*values: float) -> list[Update]:
    return [up(f"c{i}", [v]) for i, v in enumerate(values)]


def test_weighted_mean_by_num_examples() -> None:
    out = weighted_mean([up("a", [1, 2], [[1.0]], n=1), up("b", [5, 6], [[-3.0]], n=3)])
    # (1*1 + 3*5)/4 = 4, (1*2 + 3*6)/4 = 5, (1*1 + 3*-3)/4 = -2
    np.testing.assert_array_equal(out[0], [4.0, 5.0])
    np.testing.assert_array_equal(out[1], [[-2.0]])


def test_weighted_mean_ignores_zero_weight_client() -> None:
    out = weighted_mean([up("a", [2.0], n=2), up("b", [100.0], n=0), up("c", [8.0], n=1)])
    np.testing.assert_array_equal(out[0], [4.0])  # (2*2 + 1*8)/3


def test_mean_is_unweighted() -> None:
    out = mean([up("a", [1, 2], n=1), up("b", [5, 6], n=3)])
    np.testing.assert_array_equal(out[0], [3.0, 4.0])


def test_dtype_is_kept_and_integers_are_rounded() -> None:
    f32 = [Update(c, [np.array([1.0, 2.0], np.float32)], 1) for c in "ab"]
    assert weighted_mean(f32)[0].dtype == np.float32
    ints = [Update("a", [np.array([1, 4])], 1), Update("b", [np.array([2, 4])], 3)]
    out = weighted_mean(ints)[0]  # [7/4, 4] -> [2, 4], not truncated to [1, 4]
    assert out.dtype == ints[0].delta[0].dtype
    np.testing.assert_array_equal(out, [2, 4])


def test_median_odd_even_and_outlier() -> None:
    np.testing.assert_array_equal(median(scalars(3, 1, 2))[0], [2.0])
    np.testing.assert_array_equal(median(scalars(1, 2, 3, 100))[0], [2.5])  # mean would be 26.5
    out = median([up("a", [1, -1]), up("b", [2, -2]), up("evil", [1e9, 1e9])])
    np.testing.assert_array_equal(out[0], [2.0, -1.0])


def test_trimmed_mean_per_coordinate() -> None:
    ups = [
        up("a", [1, 10]),
        up("b", [2, -5]),
        up("c", [3, 0]),
        up("d", [4, 7]),
        up("evil", [1000, -1000]),
    ]
    out = trimmed_mean(0.2)(ups)  # floor(0.2 * 5) = 1 cut on each side, per coordinate
    # col 0: drop 1 and 1000 -> (2+3+4)/3 = 3; col 1: drop -1000 and 10 -> (-5+0+7)/3 = 2/3
    np.testing.assert_allclose(out[0], [3.0, 2.0 / 3.0], rtol=0, atol=1e-15)


def test_trimmed_mean_beta_zero_is_mean_and_rounding_of_cut() -> None:
    ups = scalars(1, 2, 3, 10)
    np.testing.assert_array_equal(trimmed_mean(0.0)(ups)[0], mean(ups)[0])
    # 0.29 * 100 = 28.999999999999996 in floats; the intended cut is 29 per side.
    hundred = scalars(*range(100))
    np.testing.assert_array_equal(trimmed_mean(0.29)(hundred)[0], [49.5])
    np.testing.assert_array_equal(trimmed_mean(0.25)(scalars(1, 2, 3, 1e9))[0], [2.5])


def test_krum_and_multikrum_hand_computed() -> None:
    ups = scalars(0, 1, 2.5, 4, 50)  # a, b, c, d, e(outlier); n=5, f=1 -> 2 nearest
    # squared distances: a: 1, 6.25, 16, 2500 -> score 7.25;  b: 1, 2.25, 9 -> 3.25
    # c: 6.25, 2.25, 2.25 -> 4.5;  d: 16, 9, 2.25 -> 11.25;  e: >= 2116 + 2256.25
    np.testing.assert_array_equal(krum(f=1)(ups)[0], [1.0])  # b
    np.testing.assert_array_equal(krum(f=1, m=2)(ups)[0], [1.75])  # mean(b, c)
    # m=None keeps n - f = 4: mean(a, b, c, d) = 7.5 / 4
    np.testing.assert_array_equal(krum(f=1, m=None)(ups)[0], [1.875])


def test_krum_distance_spans_all_arrays() -> None:
    # The attacker (listed first, so it would win every tie) matches the others on array 0 and
    # lies on array 1; only a distance over all arrays exposes it.
    ups = [up("evil", [0.0], [90.0])]
    ups += [up(c, [0.0], [v]) for c, v in [("a", 0.0), ("b", 1.0), ("c", 2.0), ("d", 5.0)]]
    # array 1, 2 nearest: a: 1+4 = 5, b: 1+1 = 2, c: 1+4 = 5, d: 9+16 = 25, evil: 7225+7396
    out = krum(f=1)(ups)
    np.testing.assert_array_equal(out[0], [0.0])
    np.testing.assert_array_equal(out[1], [1.0])  # b


def test_krum_ties_go_to_the_earlier_update() -> None:
    np.testing.assert_array_equal(krum(f=0)(scalars(5, 6, 7))[0], [5.0])  # all score 1
    np.testing.assert_array_equal(krum(f=0)(scalars(0, 1, 2, 3))[0], [1.0])  # b, c score 2


@pytest.mark.parametrize(
    "reduce",
    [weighted_mean, mean, median, trimmed_mean(0.1), krum(1), krum(1, m=None)],
    ids=["weighted_mean", "mean", "median", "trimmed_mean", "krum", "multikrum"],
)
def test_deterministic_and_inputs_untouched(reduce) -> None:
    rng = np.random.default_rng(0)
    ups = [
        Update(
            f"c{i}",
            [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)],
            int(rng.integers(1, 50)),
        )
        for i in range(7)
    ]
    before = [[a.copy() for a in u.delta] for u in ups]
    first, second = reduce(ups), reduce(ups)
    for a, b in zip(first, second, strict=True):
        assert a.dtype == np.float32 and a.tobytes() == b.tobytes()
    for u, saved in zip(ups, before, strict=True):
        for a, s in zip(u.delta, saved, strict=True):
            np.testing.assert_array_equal(a, s)
            assert not any(np.shares_memory(a, o) for o in first)


@pytest.mark.parametrize("reduce", [weighted_mean, mean, median, trimmed_mean(0.1), krum(0)])
def test_zero_updates_is_an_error(reduce) -> None:
    with pytest.raises(ValueError, match="zero updates"):
        reduce([])


def test_shape_mismatch_names_client_and_array() -> None:
    ups = [up("a", [1.0], [1.0, 2.0]), up("b", [1.0], [1.0, 2.0, 3.0])]
    with pytest.raises(ValueError, match=r"client 'b': array 1 has shape \(3,\)"):
        weighted_mean(ups)
    with pytest.raises(ValueError, match="client 'b' has 1 arrays, client 'a' has 2"):
        median([up("a", [1.0], [2.0]), up("b", [1.0])])
    mixed = [up("a", [1.0]), Update("b", [np.array([1.0], np.float32)], 1)]
    with pytest.raises(ValueError, match="client 'b': array 0 has dtype float32"):
        mean(mixed)


def test_bad_weights() -> None:
    with pytest.raises(ValueError, match="client 'b': num_examples"):
        weighted_mean([up("a", [1.0], n=1), up("b", [1.0], n=-2)])
    with pytest.raises(ValueError, match="num_examples > 0"):
        weighted_mean([up("a", [1.0], n=0), up("b", [1.0], n=0)])


def test_bad_robust_parameters() -> None:
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(0.5)
    with pytest.raises(ValueError, match="f must be"):
        krum(f=-1)
    with pytest.raises(ValueError, match="m must be"):
        krum(f=0, m=0)
    with pytest.raises(ValueError, match="f must be an integer"):
        krum(f=True)
    with pytest.raises(ValueError, match="needs at least 5 updates, got 4"):
        krum(f=2)(scalars(1, 2, 3, 4))
    with pytest.raises(ValueError, match="at most n - f = 3"):
        krum(f=1, m=4)(scalars(1, 2, 3, 4))


def test_sum_over_divides_by_the_population() -> None:
    out = sum_over(4)([up("a", [2.0, 1.0], n=7), up("b", [6.0, -1.0], n=1)])
    np.testing.assert_array_equal(out[0], [2.0, 0.0])  # (2 + 6) / 4, num_examples ignored
    with pytest.raises(ValueError, match="3 updates but the population has n=2"):
        sum_over(2)(scalars(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="n must be >= 1"):
        sum_over(0)
