"""A simulated clock over any Link: real clients, simulated time.

``--mode processes`` runs real client processes over gRPC, but a scenario with ``devices:``
must see the same simulated times as the in-process simulation, or the two modes would keep
different stragglers and end with different params. :class:`ClockedLink` wraps the real Link
and does what :class:`fedkit.sim.link.InProcessLink` does, with replies that really travelled:

* ``send`` stamps each task with the simulated time it was sent and a send sequence number,
  then hands it to the inner Link;
* ``arrivals`` first waits (real time, at most ``real_timeout_s``) until every task sent so
  far has really settled, then releases them in simulated completion order,
  ``sent_s + cost(task, reply, sent_s)``, ties broken by send order (as in-process), moving the
  simulated clock; an ``inf`` cost never arrives, and a task still unanswered when the real
  wait runs out is treated the same way (it settles only by the engine's deadline);
* ``clients`` are the inner Link's clients that ``online`` says are reachable now.

A reply the inner Link lost (a client process died) is released at its send time, replyless,
with the inner Link's reason. Nothing here decides anything about the algorithm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

from fedkit.runtime.link import Link
from fedkit.sim.clock import EventQueue
from fedkit.sim.link import CostFn, OnlineFn, checked_cost
from fedkit.types import Arrival, ClientId, Task


class ClockedLink:
    def __init__(
        self,
        inner: Link,
        cost: CostFn,
        online: OnlineFn | None = None,
        real_timeout_s: float = 600.0,
        start_s: float = 0.0,
    ) -> None:
        if not real_timeout_s > 0:
            raise ValueError(f"real_timeout_s must be > 0, got {real_timeout_s!r}")
        self._inner = inner
        self._cost = cost
        self._online = online
        self._timeout = real_timeout_s
        self._clock: EventQueue[str] = EventQueue(start_s)  # a resumed run continues its clock
        self._seq = 0
        self._stamp: dict[str, tuple[float, int]] = {}  # really open: task id -> (sent_s, seq)
        self._open: set[str] = set()  # open on the simulated clock
        self._ready: dict[str, Arrival] = {}  # settled for real, waiting for their simulated time

    def clients(self) -> Sequence[ClientId]:
        ids = list(self._inner.clients())
        return ids if self._online is None else [c for c in ids if self._online(c, self._clock.now)]

    def now(self) -> float:
        return self._clock.now

    def send(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if not t.task_id or t.task_id in self._open:
                raise ValueError(f"task id {t.task_id!r} is empty or already open")
        self._inner.send(tasks)
        for t in tasks:
            self._stamp[t.task_id] = (self._clock.now, self._seq)
            self._open.add(t.task_id)
            self._seq += 1

    def _settle_all(self) -> None:
        """Wait for every task really open, and schedule each on the simulated clock."""
        if not self._stamp:
            return
        deadline = self._inner.now() + self._timeout
        for a in self._inner.arrivals(deadline):
            tid = a.task.task_id
            if tid not in self._stamp:
                continue
            sent, seq = self._stamp.pop(tid)
            if tid not in self._open:
                continue  # cancelled meanwhile
            dt = 0.0 if a.reply is None else checked_cost(self._cost, a.task, a.reply, sent)
            if dt < float("inf"):
                self._ready[tid] = a
                self._clock.push(sent + dt, tid, key=(seq,))  # ties: send order, as in-process
            if not self._stamp:
                break
        if self._stamp:  # never answered in real time: lost, like an infinite cost
            self._inner.cancel(list(self._stamp))
            self._stamp.clear()

    def arrivals(self, until: float | None) -> Iterator[Arrival]:
        self._settle_all()
        while self._open and (due := self._clock.pop_due(until, self._open)) is not None:
            self._open.discard(due[1])
            yield dataclasses.replace(self._ready.pop(due[1]), time=self._clock.now)

    def cancel(self, task_ids: Iterable[str]) -> None:
        ids = list(task_ids)
        real = [t for t in ids if t in self._stamp]
        for tid in ids:
            self._open.discard(tid)
            self._ready.pop(tid, None)
            self._stamp.pop(tid, None)
        if real:
            self._inner.cancel(real)

    def wire_bytes(self) -> tuple[int, int] | None:
        return self._inner.wire_bytes()

    def close(self) -> None:
        self._open.clear()
        self._ready.clear()
        self._inner.close()
