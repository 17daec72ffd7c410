"""FedAsync: hand-computed mixing, both forms, staleness bookkeeping."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fedkit.aggregation.fedasync as fedasync_mod
from fedkit.aggregation.fedasync import FedAsync, mix, mix_delta
from fedkit.aggregation.staleness import constant, polynomial


def test_mix_hand_computed() -> None:
    x, y = [np.array([0.0, 10.0])], [np.array([4.0, 2.0])]
    np.testing.assert_allclose(mix(x, y, 0.25)[0], [1.0, 8.0])
    np.testing.assert_allclose(mix_delta(x, [np.array([4.0, -8.0])], 0.25)[0], [1.0, 8.0])
    assert mix([np.zeros(2, np.float32)], [np.ones(2, np.float32)], 0.5)[0].dtype == np.float32


def test_staleness_discounts_and_versions_count_arrivals() -> None:
    fa = FedAsync(alpha=0.8, staleness=polynomial(1.0))
    state, x = fa.init(), [np.array([0.0])]
    state, x = fa.apply(state, x, [np.array([10.0])], version=0)  # tau 0: a = 0.8
    np.testing.assert_allclose(x[0], [8.0])
    assert fa.weight(state, 0) == pytest.approx(0.4)  # tau 1: 0.8 / 2
    state, x = fa.apply(state, x, [np.array([-5.0])], version=0)
    np.testing.assert_allclose(x[0], [6.0])
    assert state.version == 2


def test_model_form_pulls_back_to_the_stale_base() -> None:
    fa = FedAsync(alpha=0.5, staleness=constant())
    x_old, x_now, delta = [np.array([0.0])], [np.array([4.0])], [np.array([2.0])]
    y = [x_old[0] + delta[0]]  # the client's model, trained from the stale x_old
    _, by_model = fa.apply_model(fa.init(), x_now, y, version=0)
    _, by_delta = fa.apply(fa.init(), x_now, delta, version=0)
    np.testing.assert_allclose(by_model[0], [3.0])  # 0.5 * 4 + 0.5 * 2
    np.testing.assert_allclose(by_delta[0], [5.0])  # 4 + 0.5 * 2
    # with a fresh base both forms agree
    _, a = fa.apply_model(fa.init(), x_now, [x_now[0] + delta[0]], version=0)
    np.testing.assert_allclose(a[0], by_delta[0])


def test_errors() -> None:
    fa = FedAsync()
    with pytest.raises(ValueError, match="newer than the server's 0"):
        fa.apply(fa.init(), [np.zeros(1)], [np.zeros(1)], version=1)
    with pytest.raises(ValueError, match="alpha must be in"):
        FedAsync(alpha=0.0)
    with pytest.raises(ValueError, match=r"client delta: array 0 has shape \(2,\)"):
        fa.apply(fa.init(), [np.zeros(1)], [np.zeros(2)], version=0)


def test_docstring_example_runs() -> None:
    assert doctest.testmod(fedasync_mod).failed == 0
