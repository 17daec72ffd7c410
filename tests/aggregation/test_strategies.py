"""The strategy registry, end-to-end steps, checkpoint round-trips and error messages."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fedkit.aggregation.base
from fedkit.aggregation import (
    ROOT_CLIENT,
    STRATEGIES,
    Aggregator,
    adagrad,
    adam,
    client_config,
    make_aggregator,
    momentum,
    sgd,
    state_from_arrays,
    state_to_arrays,
    weighted_mean,
    yogi,
)
from fedkit.types import Update

# Parameters that make every strategy work with the 5-client rounds below.
ARGS = {"krum": {"f": 1}, "multikrum": {"f": 1}, "fedau": {"num_clients": 5}}


def rounds(n_rounds: int, seed: int = 0) -> list[list[Update]]:
    rng = np.random.default_rng(seed)
    return [
        [
            Update(
                f"c{i}",
                [rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)],
                int(rng.integers(1, 20)),
            )
            for i in range(5)
        ]
        for _ in range(n_rounds)
    ]


def for_strategy(name: str, ups: list[Update]) -> list[Update]:
    """FLTrust also needs the server's root-set update among the updates."""
    if name != "fltrust":
        return ups
    return [*ups, Update(ROOT_CLIENT, [np.ones((2, 3), np.float32), np.ones(3, np.float32)], 100)]


def params0() -> list[np.ndarray]:
    return [np.ones((2, 3), np.float32), np.zeros(3, np.float32)]


def test_docstring_example_runs() -> None:
    assert doctest.testmod(fedkit.aggregation.base).failed == 0


def test_registry_names_and_defaults() -> None:
    assert set(STRATEGIES) == {
        "fedavg",
        "fedprox",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedmedian",
        "fedtrimmedavg",
        "krum",
        "multikrum",
        "fedau",
        "bulyan",
        "centeredclip",
        "fltrust",
        "normbound",
    }
    assert make_aggregator("fedavg") == Aggregator(weighted_mean, sgd(1.0))
    assert make_aggregator("fedavgm").server_opt == momentum(1.0, 0.9, False)
    assert make_aggregator("fedadam").server_opt == adam(0.1, 0.9, 0.99, 1e-3, 0.0)
    assert make_aggregator("fedyogi").server_opt == yogi(0.01, 0.9, 0.99, 1e-3, 0.0)
    assert make_aggregator("fedadagrad").server_opt == adagrad(0.1, 0.0, 1e-3, 0.0)
    assert make_aggregator("fedadam", lr=0.01, tau=1e-9).server_opt == adam(lr=0.01, tau=1e-9)
    with pytest.raises(TypeError):
        STRATEGIES["fedavg"]["lr"] = 2.0  # type: ignore[index]


def test_fedavg_is_x_plus_weighted_mean_bit_for_bit() -> None:
    agg, x = make_aggregator("fedavg"), params0()
    ups = rounds(1)[0]
    _, new_x = agg.step(agg.init(x), x, ups)
    wm = weighted_mean(ups)
    for a, p, d in zip(new_x, x, wm, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, p + d)


def test_fedavg_hand_computed() -> None:
    agg = make_aggregator("fedavg")
    x = [np.array([10.0, 20.0])]
    ups = [Update("a", [np.array([1.0, 2.0])], 1), Update("b", [np.array([5.0, 6.0])], 3)]
    _, x = agg.step(agg.init(x), x, ups)
    np.testing.assert_array_equal(x[0], [14.0, 25.0])


def test_fedprox_server_is_fedavg_and_mu_goes_to_clients() -> None:
    x, ups = params0(), rounds(1)[0]
    a = make_aggregator("fedprox", mu=0.5)
    b = make_aggregator("fedavg")
    xa, xb = a.step(a.init(x), x, ups)[1], b.step(b.init(x), x, ups)[1]
    for u, v in zip(xa, xb, strict=True):
        assert u.tobytes() == v.tobytes()
    assert client_config("fedprox", mu=0.5) == {"mu": 0.5}
    assert client_config("fedprox") == {"mu": 0.01}
    assert client_config("fedadam", lr=0.3) == {}
    with pytest.raises(ValueError, match="mu must be"):
        client_config("fedprox", mu=-1.0)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_robust_strategies_reject_an_attacker(name: str) -> None:
    honest = [0.9, 1.0, 1.1, 1.2]
    ups = [Update(f"h{i}", [np.array([v, -v])], 10) for i, v in enumerate(honest)]
    ups.insert(2, Update("evil", [np.array([1e6, 1e6])], 10_000))
    agg = make_aggregator(name, **ARGS.get(name, {}))
    x = [np.zeros(2)]
    _, x = agg.step(agg.init(x), x, ups)
    assert np.all(np.abs(x[0] - [1.05, -1.05]) <= 0.15), x
    _, fedavg_x = make_aggregator("fedavg").step({}, [np.zeros(2)], ups)
    assert fedavg_x[0][0] > 1e5  # while FedAvg is dragged away


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_checkpoint_round_trip_continues_bit_exactly(name: str, tmp_path) -> None:
    agg = make_aggregator(name, **ARGS.get(name, {}))
    data = rounds(4, seed=7)

    state, x = agg.init(params0()), params0()
    for ups in data:
        state, x = agg.step(state, x, for_strategy(name, ups))

    state2, x2 = agg.init(params0()), params0()
    for ups in data[:2]:
        state2, x2 = agg.step(state2, x2, for_strategy(name, ups))
    path = tmp_path / "ckpt.npz"
    np.savez(path, **{f"agg/{k}": v for k, v in state_to_arrays(state2).items()})
    del state2
    with np.load(path) as z:
        restored = state_from_arrays({k[len("agg/") :]: z[k] for k in z.files})
    for ups in data[2:]:
        restored, x2 = agg.step(restored, x2, for_strategy(name, ups))

    assert restored.keys() == state.keys()
    for k in state:
        for a, b in zip(state[k], restored[k], strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    for a, b in zip(x, x2, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_step_does_not_mutate_its_inputs(name: str) -> None:
    agg = make_aggregator(name, **ARGS.get(name, {}))
    data = rounds(2, seed=3)
    data = [for_strategy(name, ups) for ups in data]
    state, x = agg.step(agg.init(params0()), params0(), data[0])
    saved_state = {k: [a.copy() for a in v] for k, v in state.items()}
    saved_x = [a.copy() for a in x]
    agg.step(state, x, data[1])
    for k, v in state.items():
        for a, s in zip(v, saved_state[k], strict=True):
            assert a.tobytes() == s.tobytes()
    for a, s in zip(x, saved_x, strict=True):
        assert a.tobytes() == s.tobytes()


def test_unknown_strategy_suggests_a_name() -> None:
    with pytest.raises(
        ValueError, match="unknown strategy 'fedadm' \\(did you mean 'fedadam'\\?\\); known: bulyan, centeredclip"
    ):
        make_aggregator("fedadm")
    with pytest.raises(ValueError, match="unknown strategy 'zzz'; known: "):
        make_aggregator("zzz")


def test_unknown_or_invalid_parameter() -> None:
    with pytest.raises(
        ValueError, match="no parameter 'lrr' \\(did you mean 'lr'\\?\\); allowed: lr, beta1"
    ):
        make_aggregator("fedadam", lrr=0.1)
    with pytest.raises(ValueError, match="'fedavg' has no parameter 'mu'"):
        make_aggregator("fedavg", mu=0.1)
    with pytest.raises(ValueError, match="strategy 'fedyogi': lr must be in \\(0, inf\\]"):
        make_aggregator("fedyogi", lr=-1)
    with pytest.raises(ValueError, match="strategy 'krum': f must be an integer"):
        make_aggregator("krum", f="2")
    with pytest.raises(ValueError, match="strategy 'fedtrimmedavg': beta"):
        make_aggregator("fedtrimmedavg", beta=0.6)


def test_step_checks_reduced_delta_against_params() -> None:
    agg = make_aggregator("fedavg")
    ups = [Update("a", [np.zeros(3)], 1)]
    with pytest.raises(ValueError, match=r"reduced delta: array 0 has shape \(3,\)"):
        agg.step({}, [np.zeros(2)], ups)
    with pytest.raises(ValueError, match="no parameter arrays"):
        agg.init([])


def test_state_from_arrays_rejects_bad_keys() -> None:
    with pytest.raises(ValueError, match="not of the form"):
        state_from_arrays({"m": np.zeros(1)})
    with pytest.raises(ValueError, match="expected 0..n-1"):
        state_from_arrays({"m/0": np.zeros(1), "m/2": np.zeros(1)})
    assert state_from_arrays(state_to_arrays({})) == {}
