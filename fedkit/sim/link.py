"""The in-process Link: a seeded discrete-event simulation of the network.

``send`` runs each client's function at once (the client trains from the model it was sent) and
schedules the reply's arrival at ``now + cost(task, reply)`` simulated seconds; ``arrivals``
pops events in time order, ties broken by send order, advancing the clock. Nothing sleeps on the
wall clock. ``cost`` is the hook device profiles plug into; without one every task takes zero
simulated time, so a synchronous round sees every reply at once, as before. A cost of ``inf``
means the reply never arrives (the client dropped out): its task settles only by the engine's
deadline, exactly like a silent device over gRPC.

``executor`` decides how a batch of sent tasks becomes replies (:class:`Executor`): one after
another in this process (:func:`sequential`, the default and the reference), in worker processes,
on a Ray cluster, or stacked into one batched computation (``fedkit.sim.pool``,
``fedkit.compat.ray``, ``fedkit.sim.stacked``). It changes where the clients' work runs, never
what the Link schedules: replies come back in task order, and a task whose worker was lost comes
back as an error reply (the engine records that client as failed; the round goes on).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from fedkit.runtime.link import ClientFn
from fedkit.types import Arrival, ClientId, Reply, Task

CostFn = Callable[[Task, Reply], float]
"""Simulated seconds from sending ``task`` until ``reply`` is back at the server."""


class Executor(Protocol):
    """Runs the clients' side of a batch of tasks; every executor gives the same replies."""

    def run(self, tasks: Sequence[Task]) -> Sequence[Reply]:
        """One reply per task, in task order (an error reply where its worker was lost)."""
        ...

    def close(self) -> None: ...


class _Sequential:
    def __init__(self, fns: Mapping[ClientId, ClientFn]):
        self._fns = fns

    def run(self, tasks: Sequence[Task]) -> list[Reply]:
        return [self._fns[t.client](t) for t in tasks]

    def close(self) -> None:
        pass


def sequential(fns: Mapping[ClientId, ClientFn]) -> Executor:
    """Each task's client function, one after another, in this process."""
    return _Sequential(fns)


class InProcessLink:
    def __init__(
        self,
        clients: Mapping[ClientId, ClientFn],
        cost: CostFn | None = None,
        *,
        executor: Executor | None = None,
    ):
        self._fns = dict(clients)
        self._executor = executor or sequential(self._fns)
        self._ids = sorted(self._fns)
        self._cost = cost
        self._now = 0.0
        self._seq = 0
        self._queue: list[tuple[float, int, str]] = []
        self._open: dict[str, tuple[Task, Reply]] = {}

    def clients(self) -> Sequence[ClientId]:
        return self._ids

    def now(self) -> float:
        return self._now

    def send(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if not t.task_id or t.task_id in self._open:
                raise ValueError(f"task id {t.task_id!r} is empty or already open")
            if t.client not in self._fns:
                raise ValueError(f"task {t.task_id!r} for unknown client {t.client!r}")
        replies = self._executor.run(tasks)
        if len(replies) != len(tasks):
            raise RuntimeError(f"executor returned {len(replies)} replies for {len(tasks)} tasks")
        for t, reply in zip(tasks, replies, strict=True):
            dt = 0.0 if self._cost is None else float(self._cost(t, reply))
            if math.isnan(dt) or dt < 0:
                raise ValueError(f"cost of task {t.task_id!r} is {dt}; need >= 0 simulated seconds")
            self._open[t.task_id] = (t, reply)
            if math.isfinite(dt):
                heapq.heappush(self._queue, (self._now + dt, self._seq, t.task_id))
            self._seq += 1

    def arrivals(self, until: float | None) -> Iterator[Arrival]:
        while self._open:
            while self._queue and self._queue[0][2] not in self._open:
                heapq.heappop(self._queue)  # cancelled
            if not self._queue or (until is not None and self._queue[0][0] > until):
                if until is not None and math.isfinite(until):
                    self._now = max(self._now, until)
                return
            t, _, tid = heapq.heappop(self._queue)
            self._now = max(self._now, t)
            task, reply = self._open.pop(tid)
            yield Arrival(self._now, task, reply)

    def cancel(self, task_ids: Iterable[str]) -> None:
        for tid in task_ids:
            self._open.pop(tid, None)

    def wire_bytes(self) -> tuple[int, int] | None:
        return None

    def close(self) -> None:
        self._open.clear()
        self._queue.clear()
        self._executor.close()
