import numpy as np
import pytest

from fedkit.sim.participation import (
    Bernoulli,
    Cyclic,
    MarkovPattern,
    fedau_probabilities,
    mean_rate,
    participates,
)

PROBS = {"a": 0.1, "b": 0.5, "c": 0.9}


@pytest.mark.parametrize("pattern", [Bernoulli(PROBS), MarkovPattern(PROBS, to_active=0.2),
                                     Cyclic(PROBS, cycle=10)], ids=["bernoulli", "markov", "cyclic"])
def test_long_run_rate_is_the_participation_probability(pattern) -> None:
    for c, p in PROBS.items():
        assert mean_rate(pattern, 3, c, 2500) == pytest.approx(p, abs=0.04)


@pytest.mark.parametrize("make", [Bernoulli, MarkovPattern, Cyclic])
def test_patterns_are_deterministic_and_query_order_free(make) -> None:
    a, b = make(PROBS), make(PROBS)
    rounds = list(range(200))
    fwd = [participates(a, 1, r, "b") for r in rounds]
    back = [participates(b, 1, r, "b") for r in reversed(rounds)][::-1]
    assert fwd == back
    pats = [make(PROBS) for _ in range(5)]
    by_seed = {tuple(participates(pats[s], s, r, "b") for r in rounds) for s in range(5)}
    assert len(by_seed) > 1  # the seed matters


def test_cyclic_is_blocks_of_active_rounds() -> None:
    pat = Cyclic({"x": 0.3}, cycle=10)
    seq = [participates(pat, 0, r, "x") for r in range(40)]
    assert pat.stretches("x") == (3, 7)
    runs = "".join("1" if s else "0" for s in seq).strip("0").split("0")
    assert {len(r) for r in runs if r} == {3} and sum(seq) == 12  # 4 whole cycles


def test_markov_transitions_follow_fedau() -> None:
    pat = MarkovPattern({"lo": 0.1, "hi": 0.9}, to_active=0.5)
    assert pat.transitions("lo") == pytest.approx((0.5 / 4.5, 1.0))  # 0.5 x 9 > 1: scaled
    assert pat.transitions("hi") == pytest.approx((0.5, 0.5 / 9))
    pat2 = MarkovPattern({"lo": 0.1}, to_active=0.05)
    assert pat2.transitions("lo") == pytest.approx((0.05, 0.45))


def test_bad_probabilities_and_unknown_clients() -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        Bernoulli({"a": 0.0})
    with pytest.raises(ValueError, match="no participation probability for client 'z'"):
        participates(Bernoulli(PROBS), 0, 0, "z")
    with pytest.raises(ValueError, match="round must be >= 0"):
        participates(Cyclic(PROBS), 0, -1, "a")


def test_fedau_probabilities_follow_the_label_mix() -> None:
    counts = {f"c{i}": np.eye(10)[i % 10] * 50 for i in range(100)}
    p = fedau_probabilities(counts, seed=0)
    assert all(0.02 <= v <= 1 for v in p.values())
    w_like = [p[f"c{i}"] for i in range(10)]
    assert p == fedau_probabilities(counts, seed=0) and p != fedau_probabilities(counts, seed=1)
    assert all(p[f"c{i}"] == w_like[i % 10] for i in range(100))  # same labels, same p
    # mean x L x w_label averages to `mean` before the floor
    mixed = fedau_probabilities({f"c{i}": [1.0] * 10 for i in range(5)}, seed=0, minimum=0.0)
    assert list(mixed.values()) == pytest.approx([0.1] * 5)
