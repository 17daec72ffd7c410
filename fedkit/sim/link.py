"""The in-process Link: a seeded discrete-event simulation of the network.

``send`` runs each client's function at once (the client trains from the model it was sent) and
schedules the reply's arrival at ``now + cost(task, reply, now)`` simulated seconds; ``arrivals``
pops events in time order, ties broken by send order, advancing the clock. Nothing sleeps on the
wall clock. ``cost`` is the hook device profiles plug into (:class:`fedkit.sim.cost.DeviceCost`);
without one every task takes zero simulated time, so a synchronous round sees every reply at
once, as before. A cost of ``inf`` means the reply never arrives (the client dropped out): its
task settles only by the engine's deadline, exactly like a silent device over gRPC. ``online``
(client, time) says who is reachable, so rounds sample only clients that are online.
``present(task)`` False means the client is not there for that task (FedAU's participation
patterns): its function is not called and the task never arrives.

``executor`` decides how a batch of sent tasks becomes replies (:class:`Executor`): one after
another in this process (:func:`sequential`, the default and the reference), in worker processes,
on a Ray cluster, or stacked into one batched computation (``fedkit.sim.pool``,
``fedkit.compat.ray``, ``fedkit.sim.stacked``). It changes where the clients' work runs, never
what the Link schedules: replies come back in task order, and a task whose worker was lost comes
back as an error reply (the engine records that client as failed; the round goes on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from fedkit.runtime.link import ClientFn
from fedkit.sim.clock import EventQueue
from fedkit.types import Arrival, ClientId, Reply, Task

CostFn = Callable[[Task, Reply, float], float]
"""``cost(task, reply, sent_s)``: simulated seconds from sending ``task`` at ``sent_s`` until
``reply`` is back at the server (``inf``: never)."""

OnlineFn = Callable[[ClientId, float], bool]
"""``online(client, t)``: whether the client is reachable at simulated time ``t``."""

PresentFn = Callable[[Task], bool]
"""Whether the task's client is there to answer it at all."""


class WireModel(Protocol):
    """(down, up) bytes a real transport would put on the wire for a task and for a reply
    (``fedkit.transport.overhead.InProcessWire``), so in-process runs report them too."""

    def task(self, task: Task) -> tuple[int, int]: ...

    def reply(self, task: Task, reply: Reply) -> tuple[int, int]: ...


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


def checked_cost(cost: CostFn, task: Task, reply: Reply, sent_s: float) -> float:
    """``cost(task, reply, sent_s)``, refusing what no clock can use (NaN or negative)."""
    dt = float(cost(task, reply, sent_s))
    if math.isnan(dt) or dt < 0:
        raise ValueError(f"cost of task {task.task_id!r} is {dt}; need >= 0 simulated seconds")
    return dt


class InProcessLink:
    def __init__(
        self,
        clients: Mapping[ClientId, ClientFn],
        cost: CostFn | None = None,
        online: OnlineFn | None = None,
        start_s: float = 0.0,
        present: PresentFn | None = None,
        wire: WireModel | None = None,
        *,
        executor: Executor | None = None,
    ):
        self._fns = dict(clients)
        self._executor = executor or sequential(self._fns)
        self._wire = wire
        self._bytes = [0, 0]  # (down, up) the wire model charged so far
        self._ids = sorted(self._fns)
        self._cost = cost
        self._online = online
        self._clock: EventQueue[str] = EventQueue(start_s)  # a resumed run continues its clock
        self._present = present
        self._open: dict[str, tuple[Task, Reply | None]] = {}

    def client_states(self) -> dict[ClientId, Any]:
        """The simulated clients' current states (their hosts'), for checkpointing what they keep."""
        return {c: fn.state for c, fn in self._fns.items() if hasattr(fn, "state")}

    def clients(self) -> Sequence[ClientId]:
        if self._online is None:
            return self._ids
        return [c for c in self._ids if self._online(c, self._clock.now)]

    def now(self) -> float:
        return self._clock.now

    def send(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if not t.task_id or t.task_id in self._open:
                raise ValueError(f"task id {t.task_id!r} is empty or already open")
            if t.client not in self._fns:
                raise ValueError(f"task {t.task_id!r} for unknown client {t.client!r}")
        here: list[Task] = []
        for t in tasks:
            if self._present is not None and not self._present(t):
                self._open[t.task_id] = (t, None)  # never queued: it never arrives
                self._charge(self._wire.task(t) if self._wire is not None else None)  # sent all the same
                continue
            here.append(t)
        replies = self._executor.run(here)
        if len(replies) != len(here):
            raise RuntimeError(f"executor returned {len(replies)} replies for {len(here)} tasks")
        for t, reply in zip(here, replies, strict=True):
            dt = 0.0 if self._cost is None else checked_cost(self._cost, t, reply, self._clock.now)
            self._open[t.task_id] = (t, reply)
            self._charge(self._wire.task(t) if self._wire is not None else None)
            if math.isfinite(dt):
                self._clock.push(self._clock.now + dt, t.task_id)  # ties: send order

    def arrivals(self, until: float | None) -> Iterator[Arrival]:
        while self._open and (due := self._clock.pop_due(until, self._open)) is not None:
            task, reply = self._open.pop(due[1])
            if self._wire is not None and reply is not None:
                self._charge(self._wire.reply(task, reply))
            yield Arrival(self._clock.now, task, reply)

    def cancel(self, task_ids: Iterable[str]) -> None:
        for tid in task_ids:
            self._open.pop(tid, None)

    def _charge(self, cost: tuple[int, int] | None) -> None:
        if cost is not None:
            self._bytes[0] += cost[0]
            self._bytes[1] += cost[1]

    def wire_bytes(self) -> tuple[int, int] | None:
        """What the wire model charged so far (None without one: nothing is estimated)."""
        return None if self._wire is None else (self._bytes[0], self._bytes[1])

    def close(self) -> None:
        self._open.clear()
        self._executor.close()
