"""The one seam between the round engine and the network.

In-process simulation, gRPC processes and real devices differ only in their Link: it moves
tasks to clients and settled tasks back, each stamped with a time on the Link's own clock
(simulated in-process, real over gRPC). It decides nothing about the algorithm: which replies
count, when a round ends and what is aggregated are the engine's and its policy's business.

    link.send([task, ...])                 # returns at once
    for arrival in link.arrivals(until):   # completion order; stops at `until` (link clock)
        ...                                # or when every sent task has settled
    link.cancel([task_id, ...])            # the engine gave up on them (deadline)
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from fedkit.types import Arrival, ClientId, Reply, Task

ClientFn = Callable[[Task], Reply]
"""A client as a Link sees it: one task in, one reply out (its state lives behind it)."""


class Link(Protocol):
    def clients(self) -> Sequence[ClientId]:
        """Clients currently reachable, in a stable order."""
        ...

    def now(self) -> float:
        """Seconds on this Link's clock (0 when the link was made)."""
        ...

    def send(self, tasks: Sequence[Task]) -> None:
        """Deliver tasks (ids non-empty, unique and new); never blocks on the clients' work."""
        ...

    def arrivals(self, until: float | None) -> Iterator[Arrival]:
        """Settled tasks in completion order, until every sent task has settled or the clock
        reaches ``until`` (None: no limit). Tasks still open then stay open."""
        ...

    def cancel(self, task_ids: Iterable[str]) -> None:
        """Close open tasks: they will not arrive, and a late answer is refused as stale."""
        ...

    def wire_bytes(self) -> tuple[int, int] | None:
        """(sent, received) bytes of whole transport messages so far, envelopes included;
        None where nothing crosses a wire (in-process). Payload byte counts, which are the
        same in every mode, come from the engine; this is the transport's overhead on top."""
        ...

    def close(self) -> None: ...


def gather(link: Link, tasks: Sequence[Task], deadline: float | None) -> list[Arrival]:
    """Send ``tasks`` and wait for them until ``deadline`` (link clock); cancel the rest.

    The blocking exchange of earlier versions, kept as a helper for tools and tests. Tasks
    without a ``task_id`` get a fresh one (``round:client:random``).
    """
    tasks = [
        t if t.task_id else dataclasses.replace(t, task_id=f"{t.round}:{t.client}:{secrets.token_hex(4)}")
        for t in tasks
    ]
    link.send(tasks)
    out = list(link.arrivals(deadline))
    settled = {a.task.task_id for a in out}
    link.cancel(t.task_id for t in tasks if t.task_id not in settled)
    return out
