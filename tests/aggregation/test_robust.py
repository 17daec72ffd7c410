"""Robust reducers against hand-computed values, and the defence they give under attack."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkit.aggregation import (
    ROOT_CLIENT,
    bulyan,
    centered_clip,
    centered_clipping,
    fltrust,
    make_aggregator,
    mean,
    norm_bound,
)
from fedkit.aggregation.robust import FLTrust
from fedkit.types import Update


def ups(*vectors: list[float]) -> list[Update]:
    return [Update(f"c{i}", [np.asarray(v, dtype=np.float64)], 1) for i, v in enumerate(vectors)]


def test_bulyan_hand_computed() -> None:
    # n = 7 = 4f + 3 for f = 1. Repeated Krum (neighbours max(1, r - f - 2)) picks, in order,
    # (4,12), (1,11), (5,13), (0,10) [tie with (6,14) -> earlier], (1.5,30) [tie with (6,14)].
    # Per coordinate keep beta = 5 - 2 = 3 values closest to the median:
    # x: {0, 1, 1.5, 4, 5}, median 1.5 -> {1.5, 1, 0}, mean 5/6;
    # y: {10, 11, 30, 12, 13}, median 12 -> {12, 11, 13}, mean 12.
    out = bulyan(1)(ups([0, 10], [1, 11], [1.5, 30], [4, 12], [5, 13], [6, 14], [100, -100]))
    np.testing.assert_allclose(out[0], [5 / 6, 12.0], rtol=1e-12)


def test_bulyan_without_byzantine_clients_is_the_mean_and_checks_n() -> None:
    data = ups([1.0, 2.0], [3.0, -2.0], [8.0, 0.5])
    np.testing.assert_allclose(bulyan(0)(data)[0], mean(data)[0], rtol=1e-12)
    with pytest.raises(
        ValueError, match="bulyan with f=1 needs at least 4f \\+ 3 = 7 updates, got 6"
    ):
        bulyan(1)(ups(*[[float(i)] for i in range(6)]))


def test_centered_clip_hand_computed() -> None:
    data = ups([1.0], [1.0], [10.0])
    # from 0, tau = 2: moves 1, 1, min(10, 2) -> v = 4/3
    np.testing.assert_allclose(centered_clip(data, tau=2.0, iters=1)[0], [4 / 3])
    # second iteration from 4/3: moves -1/3, -1/3, 2 -> v = 4/3 + 4/9 = 16/9
    np.testing.assert_allclose(centered_clipping(tau=2.0, iters=2)(data)[0], [16 / 9])
    # from the previous aggregate 1.0: moves 0, 0, 2 -> 1 + 2/3
    np.testing.assert_allclose(
        centered_clip(data, tau=2.0, iters=1, start=[np.array([1.0])])[0], [5 / 3]
    )
    # a radius above every distance is the plain mean in one step
    np.testing.assert_allclose(centered_clip(data, tau=100.0)[0], [4.0])


def test_fltrust_hand_computed() -> None:
    root = [np.array([1.0, 0.0])]
    data = ups([2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0])
    # trust: 1, 0 (orthogonal), 0 (opposite), 1/sqrt2; rescaled to ||g0|| = 1:
    # ([1, 0] + (1/sqrt2) * [1, 1]/sqrt2) / (1 + 1/sqrt2) = [1.5, 0.5] / (1 + 1/sqrt2)
    s = 1 + 1 / math.sqrt(2)
    np.testing.assert_allclose(fltrust(data, root)[0], [1.5 / s, 0.5 / s], rtol=1e-12)
    # scaling a trusted update buys nothing: it is rescaled to the root's norm
    boosted = ups([2000.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0])
    np.testing.assert_allclose(fltrust(boosted, root)[0], [1.5 / s, 0.5 / s], rtol=1e-12)
    # nobody trusted: the model does not move
    np.testing.assert_array_equal(fltrust(ups([-1.0, 0.0], [0.0, 2.0]), root)[0], [0.0, 0.0])


def test_fltrust_reducer_takes_the_root_update_among_the_updates() -> None:
    data = ups([2.0, 0.0], [0.0, 1.0])
    rooted = [*data, Update(ROOT_CLIENT, [np.array([3.0, 0.0])], 100)]
    np.testing.assert_allclose(FLTrust()(rooted)[0], [3.0, 0.0])  # rescaled to ||g0|| = 3
    with pytest.raises(ValueError, match="exactly one root-set update"):
        FLTrust()(data)
    with pytest.raises(ValueError, match="root update norm is 0.0"):
        fltrust(data, [np.zeros(2)])
    with pytest.raises(ValueError, match="not shaped like"):
        fltrust(data, [np.zeros(3)])


def test_norm_bound_hand_computed_and_keeps_dtype() -> None:
    data = [
        Update("a", [np.array([3.0, 4.0], np.float32)], 1),  # norm 5 -> [0.6, 0.8]
        Update("b", [np.array([0.3, 0.0], np.float32)], 99),  # inside the bound, unweighted
    ]
    out = norm_bound(1.0)(data)
    assert out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], [0.45, 0.4], rtol=1e-6)


def test_norm_is_taken_over_all_arrays_together() -> None:
    data = [Update("a", [np.array([3.0]), np.array([[4.0]])], 1)]
    out = norm_bound(1.0)(data)
    np.testing.assert_allclose(out[0], [0.6])
    np.testing.assert_allclose(out[1], [[0.8]])


@pytest.mark.parametrize(
    "name, params",
    [
        ("bulyan", {"f": 3}),
        ("centeredclip", {"tau": 1.0, "iters": 3}),
        ("fltrust", {}),
        ("normbound", {"max_norm": 1.5}),
        ("fedmedian", {}),
    ],
)
def test_robust_strategies_survive_a_30_percent_sign_flip(name: str, params: dict) -> None:
    rng = np.random.default_rng(0)
    honest = [Update(f"h{i}", [1.0 + 0.1 * rng.normal(size=8)], 10) for i in range(12)]
    evil = [Update(f"e{i}", [-10.0 * np.ones(8)], 10) for i in range(3)]  # boosted sign flip
    updates = honest[:6] + evil + honest[6:]
    if name == "fltrust":
        updates.append(Update(ROOT_CLIENT, [1.0 + 0.1 * rng.normal(size=8)], 100))
    x = [np.zeros(8)]
    agg = make_aggregator(name, **params)
    _, robust = agg.step(agg.init(x), x, updates)
    _, plain = make_aggregator("fedavg").step(
        {}, x, [u for u in updates if u.client != ROOT_CLIENT]
    )
    assert plain[0].mean() < 0  # FedAvg is dragged backwards
    assert robust[0].mean() > 0.2, robust[0]  # still towards the honest 1.0 (normbound: 0.32)


def test_bad_hyperparameters_name_themselves() -> None:
    with pytest.raises(ValueError, match="strategy 'centeredclip': tau must be in"):
        make_aggregator("centeredclip", tau=0.0)
    with pytest.raises(ValueError, match="strategy 'normbound': max_norm must be in"):
        make_aggregator("normbound", max_norm=-1.0)
    with pytest.raises(ValueError, match="strategy 'bulyan': f must be an integer"):
        make_aggregator("bulyan", f=1.5)
    with pytest.raises(ValueError, match="iters must be >= 1"):
        centered_clip(ups([1.0]), tau=1.0, iters=0)
