"""Staleness functions: hand values, the registry, and version bookkeeping."""

from __future__ import annotations

import pytest

from fedkit.aggregation.staleness import (
    STALENESS,
    constant,
    hinge,
    make_staleness,
    polynomial,
    staleness,
)


def test_hand_values() -> None:
    assert constant()(7) == 1.0
    assert polynomial(0.5)(3) == 0.5  # 1 / sqrt(4)
    assert polynomial(1.0)(4) == pytest.approx(0.2)
    h = hinge(a=10, b=4)
    assert [h(t) for t in (0, 4)] == [1.0, 1.0]
    assert h(5) == pytest.approx(1 / 11) and h(6) == pytest.approx(1 / 21)


@pytest.mark.parametrize("name", sorted(STALENESS))
def test_fresh_is_one_and_never_increases(name: str) -> None:
    s = make_staleness(name)
    values = [s(t) for t in range(50)]
    assert values[0] == 1.0
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert all(v > 0 for v in values)


def test_bookkeeping_counts_server_versions() -> None:
    assert staleness(5, 2) == 3
    assert staleness(4, 4) == 0
    with pytest.raises(ValueError, match="newer than the server's 2"):
        staleness(2, 5)


def test_errors() -> None:
    with pytest.raises(ValueError, match="staleness must be an integer >= 0"):
        polynomial()(-1)
    with pytest.raises(ValueError, match="staleness must be an integer"):
        constant()(True)
    with pytest.raises(ValueError, match="a must be in"):
        polynomial(-0.5)
    with pytest.raises(ValueError, match="did you mean 'hinge'"):
        make_staleness("hing")
    with pytest.raises(ValueError, match="staleness function 'polynomial'"):
        make_staleness("polynomial", b=1)
    assert make_staleness("hinge", a=2, b=1)(3) == pytest.approx(0.2)
