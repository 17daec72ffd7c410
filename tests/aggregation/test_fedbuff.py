"""FedBuff: flush at K, staleness weighting, server-optimizer composition, bookkeeping."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fedkit.aggregation.fedbuff as fedbuff_mod
from fedkit.aggregation.fedbuff import FedBuff, buffered
from fedkit.aggregation.server_opt import momentum, sgd


def d(v: float) -> list[np.ndarray]:
    return [np.array([v])]


def test_flushes_exactly_at_k_with_hand_computed_step() -> None:
    fb = FedBuff(k=3, server_opt=sgd(lr=0.5))
    x0 = d(0.0)
    state, x = fb.init(x0), x0
    # FedAsync-style versions: the buffer fills while the server sits at version 0
    state, x, f1 = fb.on_update(state, x, d(3.0), version=0, client="a")
    state, x, f2 = fb.on_update(state, x, d(6.0), version=0, client="b")
    assert (f1, f2) == (False, False) and x is x0 and state.count == 2
    state = fb.add(state, d(-3.0), staleness=3, client="c")  # discounted by 1/sqrt(4)
    assert fb.ready(state)
    assert buffered(state) == [("a", 0), ("b", 0), ("c", 3)]
    state, x = fb.flush(state, x)
    # (3 + 6 - 0.5 * 3) / 3 = 2.5; x = 0 + 0.5 * 2.5
    np.testing.assert_allclose(x[0], [1.25])
    assert (state.version, state.count, state.acc) == (1, 0, ())


def test_staleness_is_counted_in_flushes() -> None:
    fb = FedBuff(k=1)
    state, x = fb.init(d(0.0)), d(0.0)
    state, x, flushed = fb.on_update(state, x, d(1.0), version=0)
    assert flushed and state.version == 1
    state, x, _ = fb.on_update(state, x, d(4.0), version=0)  # one flush behind: 1/sqrt(2)
    np.testing.assert_allclose(x[0], [1.0 + 4.0 / np.sqrt(2.0)])
    assert state.version == 2


def test_weights_divide_by_the_weight_sum() -> None:
    fb = FedBuff(k=2, server_opt=sgd(1.0))
    state = fb.add(fb.init(d(0.0)), d(2.0), weight=1.0, staleness=0)
    state = fb.add(state, d(10.0), weight=3.0, staleness=3)
    _, x = fb.flush(state, d(0.0))
    np.testing.assert_allclose(x[0], [(1 * 2.0 + 3 * 0.5 * 10.0) / 4.0])


def test_composes_with_server_momentum() -> None:
    opt = momentum(lr=0.5, momentum=0.9)
    fb = FedBuff(k=2, server_opt=opt)
    state, x = fb.init(d(0.0)), d(0.0)
    for v in (1.0, 3.0, 2.0, 2.0):
        state, x, _ = fb.on_update(state, x, d(v), version=state.version)
    # buffers of fresh updates: means 2 and 2; momentum: v1 = 2, x1 = 1; v2 = 3.8, x2 = 2.9
    np.testing.assert_allclose(x[0], [2.9])
    np.testing.assert_allclose(state.opt["v"][0], [3.8])


def test_does_not_mutate_inputs() -> None:
    fb = FedBuff(k=2)
    delta = d(2.0)
    state = fb.add(fb.init(d(0.0)), delta)
    before = state.acc[0].copy()
    fb.add(state, d(5.0))
    np.testing.assert_array_equal(state.acc[0], before)
    np.testing.assert_array_equal(delta[0], [2.0])


def test_errors() -> None:
    fb = FedBuff(k=2)
    with pytest.raises(ValueError, match="empty FedBuff buffer"):
        fb.flush(fb.init(d(0.0)), d(0.0))
    with pytest.raises(ValueError, match="k must be >= 1"):
        FedBuff(k=0)
    state = fb.add(fb.init(d(0.0)), d(1.0), client="a")
    with pytest.raises(ValueError, match=r"delta from client 'b': array 0 has shape \(2,\)"):
        fb.add(state, [np.zeros(2)], client="b")
    with pytest.raises(ValueError, match="weight must be in"):
        fb.add(state, d(1.0), weight=-1.0)
    with pytest.raises(ValueError, match="weights sum to 0"):
        fb.flush(fb.add(fb.init(d(0.0)), d(1.0), weight=0.0), d(0.0))


def test_docstring_example_runs() -> None:
    assert doctest.testmod(fedbuff_mod).failed == 0
