"""ClockedLink: whatever order replies really come back in, it releases them on the simulated
clock exactly as the in-process Link does (same times, same tie-breaking)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from fedkit.sim.clocked import ClockedLink
from fedkit.sim.link import InProcessLink
from fedkit.types import Arrival, Encoded, Reply, Task

DELAYS = {"a": 3.0, "b": 1.0, "c": 3.0, "d": math.inf, "e": 0.5}


def cost(task: Task, reply: Reply, sent_s: float) -> float:
    return DELAYS[task.client] + (sent_s if task.client == "e" else 0.0)  # e: slower later


def fn(name: str):
    return lambda task: Reply(task.task_id, name, task.round)


def tasks(rnd: int, names: str) -> list[Task]:
    return [Task(rnd, c, "train", Encoded("identity", b""), task_id=f"{rnd}.{c}") for c in names]


class Real:
    """A stand-in for the gRPC link: replies come back in reverse order; ``hang`` never answers."""

    def __init__(self, hang: str = "") -> None:
        self.inner = InProcessLink({c: fn(c) for c in DELAYS})
        self.hang, self.cancelled = hang, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def arrivals(self, until: float | None) -> Iterator[Arrival]:
        got = [a for a in self.inner.arrivals(None) if a.task.client not in self.hang]
        yield from reversed(got)

    def cancel(self, ids) -> None:
        self.cancelled += list(ids)
        self.inner.cancel(ids)


def timeline(link, rounds: list[tuple[str, float]]) -> list[tuple[str, float]]:
    out = []
    for rnd, (names, until) in enumerate(rounds, start=1):
        link.send(tasks(rnd, names))
        out += [(a.task.task_id, a.time) for a in link.arrivals(until)]
        out.append(("now", link.now()))
    return out


def test_same_times_and_order_as_in_process() -> None:
    plan = [("abcde", 10.0), ("eab", None), ("ca", 2.0)]
    want = timeline(InProcessLink({c: fn(c) for c in DELAYS}, cost), plan)
    got = timeline(ClockedLink(Real(), cost), plan)
    assert got == want
    assert want[:4] == [("1.e", 0.5), ("1.b", 1.0), ("1.a", 3.0), ("1.c", 3.0)]  # a, c: send order
    assert ("now", 10.0) in want  # d never arrives: the clock runs to the deadline


def test_a_task_unanswered_in_real_time_is_lost_and_cancelled() -> None:
    real = Real(hang="b")
    link = ClockedLink(real, cost, real_timeout_s=1.0)
    link.send(tasks(1, "ab"))
    assert [(a.task.client, a.time) for a in link.arrivals(5.0)] == [("a", 3.0)]
    assert real.cancelled == ["1.b"] and link.now() == 5.0


def test_clients_are_the_online_ones() -> None:
    link = ClockedLink(Real(), cost, online=lambda c, t: c != "a" or t < 2.0)
    assert list(link.clients()) == list("abcde")
    link.send(tasks(1, "c"))
    list(link.arrivals(None))
    assert list(link.clients()) == list("bcde")  # now = 3.0
