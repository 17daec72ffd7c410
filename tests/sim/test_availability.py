import math

import pytest

from fedkit.sim.availability import ALWAYS, MarkovSpec, online_fraction, windows


def test_always_is_online_forever() -> None:
    assert ALWAYS.online(1e9) and ALWAYS.next_change(0.0) == math.inf
    assert online_fraction(ALWAYS, 0, 100) == 1.0


def test_windows_are_half_open_and_report_the_next_change() -> None:
    w = windows([(1800, 2400), (0, 600)])
    assert [w.online(t) for t in (0, 599.9, 600, 1000, 1800, 2399, 2400)] == [
        True, True, False, False, True, True, False,
    ]
    assert w.next_change(0) == 600 and w.next_change(600) == 1800 and w.next_change(1900) == 2400
    assert w.next_change(2400) == math.inf  # offline for good after the last window
    assert online_fraction(w, 0, 3000) == pytest.approx(1200 / 3000)


def test_overlapping_windows_merge() -> None:
    w = windows([(0, 10), (5, 20), (20, 30)])
    assert w.starts == (0.0,) and w.ends == (30.0,)


def test_periodic_windows_repeat_and_wrap_across_the_period() -> None:
    w = windows([(0, 10), (90, 100)], period=100)  # on in [90, 110) of the unrolled timeline
    assert w.online(195) and not w.online(150) and w.online(205)
    assert w.next_change(95) == 110  # the window running into the next period does not flip
    assert w.next_change(50) == 90 and w.next_change(150) == 190
    assert online_fraction(w, 0, 1000) == pytest.approx(0.2)
    assert windows([(0, 100)], period=100).next_change(5) == math.inf


@pytest.mark.parametrize(
    "pairs, period, msg",
    [([(5, 5)], None, "0 <= start < end"), ([(-1, 5)], None, "0 <= start < end"),
     ([(0, 120)], 100, "ends after the period"), ([(0, 1)], 0, "period must be a positive")],
)
def test_bad_windows_are_rejected(pairs, period, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        windows(pairs, period)


def test_markov_is_deterministic_per_client_and_independent_of_query_order() -> None:
    spec = MarkovSpec(mean_on_s=600, mean_off_s=1800)
    a, b = spec.for_client(1, "c0"), spec.for_client(1, "c0")
    ts = [5000.0, 10.0, 70_000.0, 333.0]
    assert [a.online(t) for t in ts] == [b.online(t) for t in reversed(ts)][::-1]
    other = spec.for_client(1, "c1")
    assert [a.online(t) for t in range(0, 100_000, 500)] != [other.online(t) for t in range(0, 100_000, 500)]


def test_markov_flips_exactly_at_next_change() -> None:
    m = MarkovSpec(mean_on_s=50, mean_off_s=150).for_client(0, "x")
    t = 0.0
    for _ in range(200):
        c = m.next_change(t)
        assert c > t and m.online(t) == m.online((t + c) / 2) != m.online(c)
        t = c


def test_markov_online_fraction_matches_on_over_on_plus_off() -> None:
    spec = MarkovSpec(mean_on_s=600, mean_off_s=1800)
    frac = sum(online_fraction(spec.for_client(0, f"c{i}"), 0, 200_000) for i in range(20)) / 20
    assert frac == pytest.approx(0.25, abs=0.03)


def test_markov_rejects_non_positive_means() -> None:
    with pytest.raises(ValueError, match="mean_off_s must be > 0"):
        MarkovSpec(mean_on_s=1, mean_off_s=0)
