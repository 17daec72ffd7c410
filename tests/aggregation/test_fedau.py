"""FedAU: interval bookkeeping against the official per-round loop, cutoff, 1/p convergence,
and the fedau strategy end to end."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit import rng as frng
from fedkit.aggregation import make_aggregator, state_from_arrays, state_to_arrays
from fedkit.aggregation.fedau import estimates, init, observe
from fedkit.types import Update


def official(rounds: list[set[str]], clients: list[str], k: int) -> list[dict[str, float]]:
    """The per-round counters of IBM/fedau main.py ('adaptive'), written out directly."""
    count = dict.fromkeys(clients, 0)
    intervals: dict[str, list[int]] = {c: [] for c in clients}
    out = []
    for part in rounds:
        w = {}
        for c in clients:
            if c in part:
                w[c] = float(np.mean(intervals[c])) if intervals[c] else 1.0
                intervals[c].append(count[c] + 1)
                count[c] = 0
            else:
                count[c] += 1
                if count[c] >= k:
                    intervals[c].append(count[c])
                    count[c] = 0
        out.append(w)
    return out


def run(rounds: list[set[str]], cutoff: int | None) -> tuple[dict, list[dict[str, float]]]:
    state, out = init(), []
    for part in rounds:
        state, w = observe(state, part, cutoff)
        out.append(w)
    return state, out


def test_hand_computed_weights() -> None:
    rounds = [{"a"}, {"b"}, {"a", "b"}, set(), {"a"}]
    state, w = run(rounds, None)
    # a: first time unscaled, records 1; round 2 weight mean(1) = 1, records 2;
    #    round 4 weight mean(1, 2) = 1.5.   b: unscaled, records 2; round 2 weight 2.
    assert w == [{"a": 1.0}, {"b": 1.0}, {"a": 1.0, "b": 2.0}, {}, {"a": 1.5}]
    assert estimates(state) == {"a": 5 / 3, "b": 1.5}


def test_cutoff_records_k_while_absent() -> None:
    rounds = [{"a"}, set(), set(), set(), set(), set(), {"a"}]
    _, w = run(rounds, cutoff=2)
    assert w[-1] == {"a": 5 / 3}  # intervals 1, then cutoff records 2, 2; count 1 left over
    _, w = run(rounds, cutoff=None)
    assert w[-1] == {"a": 1.0}


@pytest.mark.parametrize("k", [1, 2, 3, 7, 10**6])
def test_matches_the_official_loop(k: int) -> None:
    clients = [f"c{i}" for i in range(6)]
    probs = np.array([0.05, 0.1, 0.3, 0.5, 0.7, 1.0])
    rounds = [
        {
            c
            for c, p, u in zip(clients, probs, frng.rng(3, "part", r).random(6), strict=True)
            if u < p
        }
        for r in range(300)
    ]
    _, mine = run(rounds, k if k < 10**6 else None)
    ref = official(rounds, clients, k)
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref, strict=True):
        assert a.keys() == b.keys()
        for c in a:
            assert a[c] == pytest.approx(b[c], rel=1e-12)


def test_weights_converge_to_inverse_participation_probability() -> None:
    probs = np.array([0.1, 0.25, 0.5, 0.8])
    clients = [f"c{i}" for i in range(len(probs))]
    state = init()
    for r in range(4000):
        u = frng.rng(0, "participation", r).random(len(probs))
        state, _ = observe(state, [c for c, x, p in zip(clients, u, probs, strict=True) if x < p])
    est = estimates(state)
    np.testing.assert_allclose([est[c] for c in clients], 1.0 / probs, rtol=0.12)
    # a cutoff caps the weight (and biases it low) for rare clients
    state = init()
    for r in range(4000):
        u = frng.rng(0, "participation", r).random(len(probs))
        state, _ = observe(
            state, [c for c, x, p in zip(clients, u, probs, strict=True) if x < p], 4
        )
    capped = estimates(state, 4)
    assert all(v <= 4.0 for v in capped.values())
    assert capped["c0"] < est["c0"] and capped["c3"] == pytest.approx(est["c3"], rel=0.05)


def test_fedau_strategy_hand_computed_and_checkpointable(tmp_path) -> None:
    agg = make_aggregator("fedau", num_clients=4, lr=1.0)
    state, x = agg.init([np.zeros(1)]), [np.zeros(1)]
    plan = [
        [Update("a", [np.array([4.0])], 1)],  # w 1: x += 4 / 4
        [Update("b", [np.array([8.0])], 1)],  # w 1: x += 8 / 4
        [],  # nobody: x unchanged, counters tick
        [Update("a", [np.array([2.0])], 1), Update("b", [np.array([4.0])], 1)],
    ]
    xs = []
    for i, ups in enumerate(plan):
        state, x = agg.step(state, x, ups)
        xs.append(float(x[0][0]))
        if i == 1:  # checkpoint through npz mid-run
            np.savez(tmp_path / "s.npz", **state_to_arrays(state))
            with np.load(tmp_path / "s.npz") as z:
                state = state_from_arrays({k: z[k] for k in z.files})
    # round 3: a's gap is 2 absent rounds -> weight mean(1) = 1, b's weight mean(2) = 2
    assert xs == [1.0, 3.0, 3.0, 3.0 + (1 * 2.0 + 2 * 4.0) / 4]


def test_errors() -> None:
    with pytest.raises(ValueError, match="take part twice"):
        observe(init(), ["a", "a"])
    with pytest.raises(ValueError, match="cutoff must be >= 1"):
        observe(init(), ["a"], cutoff=0)
    with pytest.raises(ValueError, match="strategy 'fedau': fedau needs num_clients"):
        make_aggregator("fedau")
    agg = make_aggregator("fedau", num_clients=1)
    state, _ = agg.step(agg.init([np.zeros(1)]), [np.zeros(1)], [Update("a", [np.ones(1)], 1)])
    with pytest.raises(ValueError, match="seen 2 distinct clients but num_clients=1"):
        agg.step(state, [np.zeros(1)], [Update("b", [np.ones(1)], 1)])
