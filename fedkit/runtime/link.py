"""The one seam between the round engine and the network.

In-process simulation, gRPC processes and real devices differ only in their Link: it moves
tasks to clients and replies back; it decides nothing about the algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from fedkit.types import ClientId, Reply, Task

ClientFn = Callable[[Task], Reply]
"""A client as the engine sees it: one task in, one reply out."""


class Link(Protocol):
    def clients(self) -> Sequence[ClientId]:
        """Clients currently reachable, in a stable order."""
        ...

    def exchange(self, tasks: Mapping[ClientId, Task], deadline_s: float | None) -> list[Reply]:
        """Deliver every task and return the replies that arrived by the deadline.

        A client that failed, dropped out or missed the deadline is simply absent from the
        result (or present with ``error`` set); the engine decides what that means.
        """
        ...

    def wire_bytes(self) -> tuple[int, int] | None:
        """(sent, received) bytes of whole transport messages so far, envelopes included;
        None where nothing crosses a wire (in-process). Payload byte counts, which are the
        same in every mode, come from the engine; this is the transport's overhead on top."""
        ...

    def close(self) -> None: ...
