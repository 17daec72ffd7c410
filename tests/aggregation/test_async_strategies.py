"""The async strategy registry: defaults, parameters reaching the values, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.aggregation import ASYNC_STRATEGIES, make_async
from fedkit.aggregation.fedasync import FedAsync
from fedkit.aggregation.fedbuff import FedBuff
from fedkit.aggregation.fedcompass import Compass
from fedkit.aggregation.server_opt import adam, sgd
from fedkit.aggregation.staleness import hinge, polynomial


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
