from __future__ import annotations

import pytest

from fedkit import rng as frng
from fedkit.secure import graph


def _names(n: int) -> list[str]:
    return [f"c{i:03d}" for i in range(n)]


@pytest.mark.parametrize(("n", "k"), [(10, 4), (11, 6), (12, 5), (20, 19), (9, 8), (2, 1)])
def test_harary_is_k_regular_and_symmetric(n: int, k: int) -> None:
    g = graph.harary(_names(n), k, frng.rng(0, "g"))
    assert all(len(v) == k for v in g.values())
    assert all(c not in g[c] for c in g)
    assert all(c in g[v] for c in g for v in g[c])


def test_odd_degree_on_odd_ring_rounds_up() -> None:
    g = graph.harary(_names(11), 3, frng.rng(0, "g"))
    assert {len(v) for v in g.values()} == {4}


def test_complete_graph_and_seeded_relabelling() -> None:
    names = _names(8)
    g = graph.harary(names, 7, frng.rng(0, "g"))
    assert all(set(g[c]) == set(names) - {c} for c in names)
    a = graph.harary(_names(30), 6, frng.rng(5, "g", 1))
    assert a == graph.harary(_names(30), 6, frng.rng(5, "g", 1))
    assert a != graph.harary(_names(30), 6, frng.rng(5, "g", 2))


def test_default_degree_and_threshold() -> None:
    assert [graph.degree_for(n) for n in (10, 50, 100, 200, 10_000)] == [9, 24, 28, 32, 54]
    assert [graph.threshold_for(k) for k in (1, 9, 24, 32)] == [1, 5, 13, 17]


def test_bad_graph_arguments() -> None:
    with pytest.raises(ValueError, match="degree"):
        graph.harary(_names(5), 5, frng.rng(0))
    with pytest.raises(ValueError, match="distinct"):
        graph.harary(["a", "a", "b"], 1, frng.rng(0))
    with pytest.raises(ValueError, match="at least 2"):
        graph.degree_for(1)
