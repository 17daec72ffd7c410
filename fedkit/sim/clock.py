"""A discrete-event queue: the simulated clock the in-process Link runs on.

Nothing sleeps. Time only moves when an event is popped (or :meth:`EventQueue.advance` is
called for a deadline), so a simulated hour of a thousand devices costs what its events cost.

Ordering is total and reproducible: events pop by ``(time, key, seq)``. ``key`` is a tuple
the caller chooses (default ``()``), e.g. ``(client,)`` so that two clients finishing at the
same instant pop in name order whatever order their tasks were sent in (the in-process and the
multi-process modes then agree). ``seq`` is the insertion sequence number, the last resort:
equal time and key pop first-in first-out. No random tie-breaking is needed, hence no seed.

>>> q = EventQueue()
>>> _ = q.push(2.0, "b"); _ = q.push(1.0, "a"); _ = q.push(2.0, "c")
>>> [q.pop() for _ in range(len(q))]
[(1.0, 'a'), (2.0, 'b'), (2.0, 'c')]
>>> q.now
2.0
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Container, Iterator
from typing import Any, Generic, TypeVar

E = TypeVar("E")


class EventQueue(Generic[E]):
    """A min-heap of ``(time, key, seq, event)`` with a clock that never runs backwards.

    It is the one mutable object of the simulator, owned by the Link that drives it; everything
    it schedules is computed by pure functions (``fedkit.sim.devices``).
    """

    __slots__ = ("_heap", "_seq", "_now", "_cancelled")

    def __init__(self, start: float = 0.0):
        if not math.isfinite(start):
            raise ValueError(f"start time must be finite, got {start!r}")
        self._heap: list[tuple[float, tuple[Any, ...], int, E]] = []
        self._seq = 0
        self._now = float(start)
        self._cancelled: set[int] = set()

    @property
    def now(self) -> float:
        """Simulated seconds: the time of the last popped event (or of the last advance)."""
        return self._now

    def __len__(self) -> int:
        return len(self._heap) - len(self._cancelled)

    def push(self, time: float, event: E, key: tuple[Any, ...] = ()) -> int:
        """Schedule ``event`` at ``time`` (>= now); returns a handle for :meth:`cancel`."""
        if not time >= self._now:  # also catches NaN
            raise ValueError(f"event time {time!r} is before now={self._now!r} (or not a number)")
        seq = self._seq
        self._seq = seq + 1
        heapq.heappush(self._heap, (time, key, seq, event))
        return seq

    def cancel(self, handle: int) -> None:
        """Forget a pending event (a task whose client went offline); unknown handles are an error."""
        if handle >= self._seq or handle < 0:
            raise ValueError(f"no event with handle {handle}")
        if all(h != handle for _, _, h, _ in self._heap) or handle in self._cancelled:
            raise ValueError(f"event {handle} already popped or cancelled")
        self._cancelled.add(handle)

    def _drop_cancelled(self) -> None:
        heap, cancelled = self._heap, self._cancelled
        while heap and heap[0][2] in cancelled:
            cancelled.discard(heapq.heappop(heap)[2])

    def peek(self) -> tuple[float, E]:
        """The next ``(time, event)`` without removing it; IndexError when empty."""
        if self._cancelled:
            self._drop_cancelled()
        if not self._heap:
            raise IndexError("peek from an empty event queue")
        time, _, _, event = self._heap[0]
        return time, event

    def pop(self) -> tuple[float, E]:
        """Remove the next event and move the clock to its time; IndexError when empty."""
        if self._cancelled:
            self._drop_cancelled()
        if not self._heap:
            raise IndexError("pop from an empty event queue")
        time, _, _, event = heapq.heappop(self._heap)
        self._now = time
        return time, event

    def advance(self, time: float) -> None:
        """Move the clock to ``time`` with no event (a deadline passing); never backwards,
        never past a pending event."""
        if not time >= self._now:
            raise ValueError(f"cannot move the clock back from {self._now!r} to {time!r}")
        if len(self) and self.peek()[0] < time:
            raise ValueError(f"an event is pending at {self.peek()[0]!r}, before {time!r}")
        self._now = float(time)

    def until(self, time: float | None = None) -> Iterator[tuple[float, E]]:
        """Pop events in order while their time is <= ``time`` (all of them for None), then
        leave the clock at ``time``. Events pushed while iterating are seen if they fall in."""
        while len(self) and (time is None or self.peek()[0] <= time):
            yield self.pop()
        if time is not None and time > self._now:
            self._now = float(time)

    def pop_due(self, until: float | None, live: Container[E]) -> tuple[float, E] | None:
        """The next event due by ``until`` (None: no limit) that is still in ``live``; None when
        there is none, the clock then moved on to a finite ``until``.

        Events no longer in ``live`` (tasks cancelled or settled by the engine) are dropped as
        they reach the top without moving the clock, so the Links cancel a task for free."""
        while len(self):
            time, event = self.peek()
            if event not in live:
                heapq.heappop(self._heap)
                continue
            if until is not None and time > until:
                break
            return self.pop()
        if until is not None and math.isfinite(until) and until > self._now:
            self._now = float(until)
        return None
