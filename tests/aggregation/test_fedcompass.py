"""FedCompass scheduler: speed estimates, group joining and creation, step clamping, timers,
late arrivals, and the staleness-weighted group aggregation -- all against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.aggregation.fedcompass import Assignment, Compass
from fedkit.aggregation.staleness import polynomial
from fedkit.types import Update


def up(client: str, v: float = 1.0) -> Update:
    return Update(client, [np.array([v])], 1)


def steps_of(decision) -> list[tuple[str, int, int | None, int]]:
    return [(a.client, a.steps, a.group, a.version) for a in decision.assign]


def test_speed_estimate_uses_momentum() -> None:
    cp = Compass(min_steps=2, max_steps=10)  # speed_momentum 0.9
    state, first = cp.init(["a"])
    assert first.assign == (Assignment("a", 10, None, 0),)
    state, dec = cp.on_arrival(state, up("a"), now=10.0)  # first estimate: 10 s / 10 steps
    assert state.clients["a"].speed == 1.0
    (a,) = dec.assign
    state, _ = cp.on_arrival(state, up("a"), now=22.0, steps_done=a.steps, elapsed=12.0)
    assert state.clients["a"].speed == pytest.approx(0.1 * 1.0 + 0.9 * 1.2)


def test_groups_form_and_members_arrive_together() -> None:
    cp = Compass(min_steps=2, max_steps=10, speed_momentum=1.0)
    state, _ = cp.init(["a", "b", "c"])

    # a (1 s/step) arrives first: aggregated alone, opens group 0 (10 steps, due 20, latest 25)
    state, dec = cp.on_arrival(state, up("a"), now=10.0)
    assert [(u.client, tau) for u, tau in dec.aggregate] == [("a", 0)]
    assert steps_of(dec) == [("a", 10, 0, 1)]
    g0 = state.groups[0]
    assert (g0.expected, g0.latest) == (20.0, 25.0)

    # b (1.5 s/step) joins group 0: floor((20 - 15) / 1.5) = 3 steps, due with a at 19.5
    state, dec = cp.on_arrival(state, up("b"), now=15.0)
    assert [(u.client, tau) for u, tau in dec.aggregate] == [("b", 1)]
    assert steps_of(dec) == [("b", 3, 0, 2)]

    # b arrives on time and waits; a completes the group: one aggregation of both
    state, dec = cp.on_arrival(state, up("b"), now=19.5)
    assert dec.aggregate == () and dec.assign == ()
    state, dec = cp.on_arrival(state, up("a"), now=20.0)
    assert [(u.client, tau) for u, tau in dec.aggregate] == [("b", 0), ("a", 1)]
    # fastest first: a opens group 1 (no open group left: max steps, due 30),
    # b joins it with floor((30 - 20) / 1.5) = 6 steps
    assert steps_of(dec) == [("a", 10, 1, 3), ("b", 6, 1, 3)]
    assert sorted(state.groups) == [1] and state.version == 3

    state, _ = cp.on_arrival(state, up("b"), now=29.0)
    state, dec = cp.on_arrival(state, up("a"), now=30.0)
    assert steps_of(dec) == [("a", 10, 2, 4), ("b", 6, 2, 4)]  # group 2: due 40, latest 45

    # c (4 s/step) cannot join group 2 (0 steps left); the new group aims at
    # latest(45) + fastest(1) * 10 = 55: floor((55 - 40) / 4) = 3 steps
    state, dec = cp.on_arrival(state, up("c"), now=40.0)
    assert [(u.client, tau) for u, tau in dec.aggregate] == [("c", 4)]
    assert steps_of(dec) == [("c", 3, 3, 5)]
    assert (state.groups[3].expected, state.groups[3].latest) == (52.0, 58.0)


def _two_groups(cp: Compass, c_speed_s: float):
    """a opens group 0 at t=10 (due 20, latest 25); c arrives at t=12 with the given speed."""
    state, _ = cp.init(["a", "c"])
    state, _ = cp.on_arrival(state, up("a"), now=10.0)
    return cp.on_arrival(state, up("c"), now=12.0, elapsed=10 * c_speed_s)


def test_steps_are_clamped_between_min_and_max() -> None:
    cp = Compass(min_steps=4, max_steps=10, speed_momentum=1.0)
    # join rule: 0.5 s/step fits floor(8 / 0.5) = 16 > max steps in group 0 -> new group;
    # the new-group target 25 + 1 * 10 = 35 needs 46 steps > max -> max_steps
    _, dec = _two_groups(cp, 0.5)
    assert steps_of(dec) == [("c", 10, 1, 2)]
    # 3 s/step: joining needs floor(8 / 3) = 2 < min; new group: floor(23 / 3) = 7 steps
    _, dec = _two_groups(cp, 3.0)
    assert steps_of(dec) == [("c", 7, 1, 2)]
    # 8 s/step: floor(23 / 8) = 2 < min -> raised to min_steps
    _, dec = _two_groups(cp, 8.0)
    assert steps_of(dec) == [("c", 4, 1, 2)]
    # 2 s/step: joins group 0 with floor(8 / 2) = 4 = min steps
    _, dec = _two_groups(cp, 2.0)
    assert steps_of(dec) == [("c", 4, 0, 2)]


def test_timer_then_late_arrival_goes_to_the_general_buffer() -> None:
    cp = Compass(min_steps=2, max_steps=10, speed_momentum=1.0)
    state, _ = cp.init(["a", "b"])
    state, _ = cp.on_arrival(state, up("a"), now=10.0)  # group 0: due 20, latest 25
    state, _ = cp.on_arrival(state, up("b"), now=15.0)  # joins group 0 with 3 steps
    state, _ = cp.on_arrival(state, up("a"), now=20.0)  # on time, waits for b
    assert cp.next_timer(state) == (25.0, 0)
    with pytest.raises(ValueError, match="call on_timer for it first"):
        cp.on_arrival(state, up("b"), now=26.0)

    state, dec = cp.on_timer(state, 0, now=25.0)  # b is a straggler: aggregate a alone
    assert [(u.client, tau) for u, tau in dec.aggregate] == [("a", 1)]
    assert steps_of(dec) == [("a", 10, 1, 3)]  # group 1: due 35, latest 40
    assert state.groups[0].closed and state.groups[0].pending == ("b",)

    state, dec = cp.on_arrival(state, up("b", 7.0), now=26.0)  # late: buffered, new work now
    assert dec.aggregate == () and 0 not in state.groups
    assert [(u.client, v) for u, v in state.general] == [("b", 2)]
    # b (speed 11 / 3) joins group 1: floor((35 - 26) / (11 / 3)) = 2 steps
    assert steps_of(dec) == [("b", 2, 1, 3)]

    state, _ = cp.on_arrival(state, up("b"), now=33.0)
    state, dec = cp.on_arrival(state, up("a"), now=35.0)
    # b's late update would join group 1's aggregation, but b's newer on-time one replaces it
    assert [(u.client, u.delta[0][0], tau) for u, tau in dec.aggregate] == [
        ("b", 1.0, 0),
        ("a", 1.0, 0),
    ]
    assert state.general == ()


def test_late_update_is_aggregated_with_its_staleness() -> None:
    cp = Compass(min_steps=2, max_steps=10, speed_momentum=1.0)
    state, _ = cp.init(["a", "b"])
    state, _ = cp.on_arrival(state, up("a"), now=10.0)  # group 0: due 20, latest 25
    state, _ = cp.on_arrival(state, up("b"), now=15.0)  # joins group 0 with 3 steps
    state, _ = cp.on_arrival(state, up("a"), now=20.0)
    state, _ = cp.on_timer(state, 0, now=25.0)  # a reassigned to group 1 (due 35)
    state, dec = cp.on_arrival(state, up("b", 7.0), now=26.0)  # late
    assert steps_of(dec) == [("b", 2, 1, 3)]
    # b's next task then straggles past group 1's latest time (40): the timer aggregates a's
    # update together with b's late one from the general buffer, one version stale
    state, dec = cp.on_arrival(state, up("a"), now=35.0)
    assert dec.aggregate == ()
    state, dec = cp.on_timer(state, 1, now=40.0)
    assert [(u.client, u.delta[0][0], tau) for u, tau in dec.aggregate] == [
        ("b", 7.0, 1),
        ("a", 1.0, 0),
    ]


def test_timer_with_nobody_arrived_closes_the_group() -> None:
    cp = Compass(min_steps=2, max_steps=10, speed_momentum=1.0)
    state, _ = cp.init(["a"])
    state, _ = cp.on_arrival(state, up("a"), now=10.0)
    state, dec = cp.on_timer(state, 0, now=25.0)
    assert dec.aggregate == () and cp.next_timer(state) is None
    state, dec = cp.on_arrival(state, up("a"), now=30.0)  # late: new group of max steps
    assert steps_of(dec) == [("a", 10, 1, 1)] and 0 not in state.groups


def test_aggregate_hand_computed() -> None:
    cp = Compass(alpha=0.9, staleness=polynomial(0.5), num_clients=3)
    state, _ = cp.init(["a", "b", "c"])
    x = [np.array([0.0], np.float32)]
    new = cp.aggregate(state, x, [(up("a", 3.0), 0), (up("b", 6.0), 3)])
    np.testing.assert_allclose(new[0], [0.9 / 3 * (3.0 + 0.5 * 6.0)], rtol=1e-6)
    assert new[0].dtype == np.float32 and x[0][0] == 0.0


def test_errors() -> None:
    with pytest.raises(ValueError, match="min_steps=5 exceeds max_steps=4"):
        Compass(min_steps=5, max_steps=4)
    cp = Compass()
    with pytest.raises(ValueError, match="distinct clients"):
        cp.init(["a", "a"])
    state, _ = cp.init(["a"])
    with pytest.raises(ValueError, match="client 'z' is not one FedCompass scheduled"):
        cp.on_arrival(state, up("z"), now=1.0)
    with pytest.raises(ValueError, match="elapsed must be in"):
        cp.on_arrival(state, up("a"), now=0.0)


def test_a_lost_member_leaves_its_group_and_rejoins_later() -> None:
    cp = Compass(min_steps=2, max_steps=10)
    state, _ = cp.init(["a", "b"])
    state, _ = cp.on_arrival(state, up("a"), now=10.0)  # speed 1: a new group, 10 steps
    state, dec = cp.on_arrival(state, up("b"), now=12.0)  # speed 1.2: joins a's group
    assert steps_of(dec) == [("b", 6, 0, 2)] and state.groups[0].pending == ("a", "b")
    state, dec = cp.on_lost(state, "b", now=13.0)  # b's task is gone: no work, out of the group
    assert dec.assign == () and state.groups[0].pending == ("a",)
    assert state.clients["b"].group is None
    state, dec = cp.on_arrival(state, up("a"), now=20.0)  # a alone completes the group
    assert [u.client for u, _ in dec.aggregate] == ["a"] and steps_of(dec)[0][0] == "a"
    state, a = cp.rejoin(state, "b", now=20.0)  # known speed: b joins a's new group
    assert (a.client, a.group) == ("b", 1) and a.steps == 8 and a.version == 3


def test_losing_the_last_pending_member_aggregates_the_group() -> None:
    cp = Compass(min_steps=2, max_steps=10)
    state, _ = cp.init(["a", "b"])
    state, _ = cp.on_arrival(state, up("a"), now=10.0)
    state, _ = cp.on_arrival(state, up("b"), now=12.0)
    state, dec = cp.on_arrival(state, up("a"), now=20.0)  # a on time; b still pending
    assert dec.aggregate == ()
    state, dec = cp.on_lost(state, "b", now=21.0)
    assert [u.client for u, _ in dec.aggregate] == ["a"] and [x.client for x in dec.assign] == ["a"]
    state, a = cp.rejoin(Compass(min_steps=2, max_steps=10).init(["c"])[0], "c", now=0.0)
    assert (a.steps, a.group) == (10, None)  # never arrived: a first task again
