"""The in-process Link: calls each client's function directly, in task order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedkit.runtime.link import ClientFn
from fedkit.types import ClientId, Reply, Task


class InProcessLink:
    def __init__(self, clients: Mapping[ClientId, ClientFn]):
        self._fns = dict(clients)
        self._ids = sorted(self._fns)

    def clients(self) -> Sequence[ClientId]:
        return self._ids

    def exchange(self, tasks: Mapping[ClientId, Task], deadline_s: float | None) -> list[Reply]:
        return [self._fns[c](t) for c, t in tasks.items()]

    def wire_bytes(self) -> tuple[int, int] | None:
        return None

    def close(self) -> None:
        pass
