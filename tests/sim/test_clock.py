import math

import pytest

from fedkit.sim.clock import EventQueue


def test_events_pop_in_time_order_and_the_clock_follows() -> None:
    q: EventQueue[str] = EventQueue()
    for t, e in [(3.0, "c"), (1.0, "a"), (2.5, "b")]:
        q.push(t, e)
    assert len(q) == 3 and q.peek() == (1.0, "a") and q.now == 0.0
    assert [q.pop() for _ in range(3)] == [(1.0, "a"), (2.5, "b"), (3.0, "c")]
    assert q.now == 3.0 and len(q) == 0


def test_ties_break_by_key_then_insertion_order() -> None:
    q: EventQueue[str] = EventQueue()
    q.push(1.0, "late-b", ("b",))
    q.push(1.0, "a1", ("a",))
    q.push(1.0, "late-b2", ("b",))
    q.push(1.0, "a2", ("a",))
    assert [q.pop()[1] for _ in range(4)] == ["a1", "a2", "late-b", "late-b2"]


def test_same_schedule_in_any_insertion_order_pops_identically_with_keys() -> None:
    """In-process and multi-process modes send tasks in different orders; a client key makes
    the completion order independent of that."""
    items = [(2.0, "c2"), (1.0, "c1"), (2.0, "c0"), (1.0, "c3")]

    def order(seq: list[tuple[float, str]]) -> list[str]:
        q: EventQueue[str] = EventQueue()
        for t, c in seq:
            q.push(t, c, (c,))
        return [q.pop()[1] for _ in range(len(q))]

    assert order(items) == order(items[::-1]) == ["c1", "c3", "c0", "c2"]


def test_clock_never_runs_backwards() -> None:
    q: EventQueue[int] = EventQueue()
    q.push(5.0, 1)
    q.pop()
    with pytest.raises(ValueError, match="before now=5.0"):
        q.push(4.0, 2)
    with pytest.raises(ValueError, match="not a number"):
        q.push(math.nan, 2)
    with pytest.raises(ValueError, match="move the clock back"):
        q.advance(1.0)


def test_advance_and_until_model_a_deadline() -> None:
    q: EventQueue[str] = EventQueue()
    for t, c in [(1.0, "fast"), (4.0, "slow"), (2.0, "mid")]:
        q.push(t, c)
    arrived = [c for _, c in q.until(3.0)]
    assert arrived == ["fast", "mid"] and q.now == 3.0 and len(q) == 1
    with pytest.raises(ValueError, match="pending at 4.0"):
        q.advance(5.0)
    q.advance(3.5)
    assert q.now == 3.5 and list(q.until()) == [(4.0, "slow")]


def test_until_sees_events_pushed_while_iterating() -> None:
    q: EventQueue[int] = EventQueue()
    q.push(1.0, 0)
    seen = []
    for t, n in q.until(10.0):
        seen.append((t, n))
        if n < 3:
            q.push(t + 2.0, n + 1)
    assert seen == [(1.0, 0), (3.0, 1), (5.0, 2), (7.0, 3)] and q.now == 10.0


def test_cancelled_events_never_pop() -> None:
    q: EventQueue[str] = EventQueue()
    h = q.push(1.0, "dropped")
    q.push(2.0, "kept")
    q.cancel(h)
    assert len(q) == 1 and q.peek() == (2.0, "kept") and q.pop() == (2.0, "kept")
    with pytest.raises(ValueError, match="already popped or cancelled"):
        q.cancel(h)
    with pytest.raises(ValueError, match="no event with handle 99"):
        q.cancel(99)
    with pytest.raises(IndexError):
        q.pop()
