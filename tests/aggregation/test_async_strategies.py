"""The async strategy registry: defaults, parameters reaching the values, and errors; the
engine-shaped steps against hand-computed updates."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.aggregation import ASYNC_STRATEGIES, make_async
from fedkit.aggregation.async_strategies import VERSION_KEY, make_step
from fedkit.aggregation.base import state_from_arrays, state_to_arrays
from fedkit.aggregation.fedasync import FedAsync
from fedkit.aggregation.fedbuff import FedBuff
from fedkit.aggregation.fedcompass import Compass
from fedkit.aggregation.server_opt import adam, sgd
from fedkit.aggregation.staleness import constant, hinge, polynomial
from fedkit.types import Update


def test_defaults_build_the_documented_values() -> None:
    assert set(ASYNC_STRATEGIES) == {"fedasync", "fedbuff", "fedcompass"}
    assert make_async("fedasync") == FedAsync(0.9, polynomial(0.5))
    assert make_async("fedbuff") == FedBuff(10, sgd(1.0), polynomial(0.5))
    assert make_async("fedcompass") == Compass()


def test_parameters_reach_the_values() -> None:
    fa = make_async("fedasync", alpha=0.5, staleness="hinge", staleness_params={"a": 2, "b": 1})
    assert fa == FedAsync(0.5, hinge(2, 1))
    fb = make_async("fedbuff", k=3, lr=0.01, server_opt="adam", server_opt_params={"tau": 1e-2})
    assert fb == FedBuff(3, adam(lr=0.01, tau=1e-2), polynomial(0.5))
    state, x = fb.init([np.zeros(2)]), [np.zeros(2)]
    for _ in range(3):
        state, x, flushed = fb.on_update(state, x, [np.ones(2)], version=0)
    assert flushed and np.all(x[0] > 0)
    cp = make_async("fedcompass", min_steps=5, max_steps=50, num_clients=8)
    assert (cp.min_steps, cp.max_steps, cp.num_clients) == (5, 50, 8)


def test_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="did you mean 'fedbuff'"):
        make_async("fedbuf")
    with pytest.raises(ValueError, match="no parameter 'kk'; did you mean 'k'"):
        make_async("fedbuff", kk=3)
    with pytest.raises(ValueError, match="async strategy 'fedbuff': unknown server_opt 'lamb'"):
        make_async("fedbuff", server_opt="lamb")
    with pytest.raises(ValueError, match="async strategy 'fedasync': unknown staleness function"):
        make_async("fedasync", staleness="exp")
    with pytest.raises(ValueError, match="async strategy 'fedcompass': min_steps=9 exceeds"):
        make_async("fedcompass", min_steps=9, max_steps=8)


# --- the engine-shaped steps: one call = one new model version, staleness from the versions ---



def _u(client: str, value: float, version: int, n: int = 1) -> Update:
    return Update(client, [np.array([value])], n, version=version)


@pytest.mark.parametrize(
    ("fn", "s2"), [(constant(), 1.0), (polynomial(0.5), 3**-0.5), (hinge(10, 1), 1 / 11)],
    ids=["constant", "polynomial", "hinge"],
)
def test_fedasync_step_mixes_with_each_staleness_function(fn, s2: float) -> None:
    step = make_step(FedAsync(alpha=0.5, staleness=fn))
    x, st = [np.array([0.0])], step.init([np.array([0.0])])
    st, x = step.step(st, x, [_u("a", 2.0, version=0)])  # fresh: x + 0.5 * 1 * 2
    st, x = step.step(st, x, [_u("a", 2.0, version=1)])
    st, x = step.step(st, x, [_u("b", 4.0, version=0)])  # two versions stale
    assert x[0][0] == pytest.approx(1.0 + 1.0 + 0.5 * s2 * 4.0)
    assert int(st[VERSION_KEY][0]) == 3


def test_fedbuff_step_is_one_flush_and_checkpoints() -> None:
    step = make_step(FedBuff(k=2, server_opt=sgd(lr=0.5)))
    x, st = [np.array([1.0])], step.init([np.array([1.0])])
    st, x = step.step(st, x, [_u("a", 2.0, 0), _u("b", 6.0, 0)])  # 1 + 0.5 * (2 + 6) / 2
    assert x[0][0] == pytest.approx(3.0)
    st = state_from_arrays(state_to_arrays(st))  # resumes bit-exactly from a checkpoint
    st, x = step.step(st, x, [_u("c", 4.0, 0), _u("a", 4.0, 1)])  # staleness 1 and 0
    assert x[0][0] == pytest.approx(3.0 + 0.5 * (4.0 * 2**-0.5 + 4.0) / 2)
    assert int(st[VERSION_KEY][0]) == 2
    with pytest.raises(ValueError, match="newer than the server"):
        step.step(st, x, [_u("a", 1.0, 5)])
    with pytest.raises(ValueError, match="at least one update"):
        step.step(st, x, [])


def test_compass_step_divides_by_num_clients() -> None:
    step = make_step(Compass(alpha=0.8, num_clients=4))
    x, st = [np.array([0.0])], step.init([np.array([0.0])])
    st, x = step.step(st, x, [_u("a", 1.0, 0)])
    st, x = step.step(st, x, [_u("b", 3.0, 0), _u("a", 1.0, 1)])  # b 1 stale, a fresh
    assert x[0][0] == pytest.approx(0.2 * 1.0 + 0.2 * (3.0 * 2**-0.5 + 1.0))
    with pytest.raises(ValueError, match="num_clients"):
        make_step(Compass())
