"""The in-process split transport: a direct call into the endpoint, with a wire round trip.

:class:`LocalConnect` is the :data:`~fedkit.split.wire.SplitConnect` of the in-process
simulation: each task's stream opens on the :class:`~fedkit.split.wire.SplitEndpoint` and
every frame goes through ``Encoded.to_bytes``/``from_bytes`` both ways, so the endpoint sees
(and counts) exactly the bytes the gRPC ``Split`` stream would carry, and frames over
``endpoint.max_frame_bytes()`` are refused as a transport would (``resource_exhausted``).
"""

from __future__ import annotations

from fedkit.split.channel import roundtrip
from fedkit.split.wire import SplitEndpoint, SplitFrame, SplitRefused
from fedkit.types import ClientId, Task

__all__ = ["LocalConnect", "LocalStream"]


class LocalStream:
    """The client end of one task's stream, calling the endpoint directly."""

    def __init__(self, endpoint: SplitEndpoint, client: ClientId, task_id: str) -> None:
        self.endpoint, self.client, self.task_id = endpoint, client, task_id
        endpoint.open(client, task_id)
        self._closed = False

    def send(self, frame: SplitFrame, expect_reply: bool = True) -> SplitFrame | None:
        if self._closed:
            raise SplitRefused(f"the stream of task {self.task_id} is closed", "failed_precondition")
        wire = roundtrip(frame)
        limit = self.endpoint.max_frame_bytes()
        if wire.nbytes > limit:
            raise SplitRefused(f"frame of {wire.nbytes} bytes is over the limit of {limit}", "resource_exhausted")
        reply = self.endpoint.exchange(self.client, self.task_id, wire)
        return None if reply is None or not expect_reply else roundtrip(reply)

    def close(self, reason: str = "") -> None:
        if not self._closed:
            self._closed = True
            self.endpoint.close(self.client, self.task_id, reason)


class LocalConnect:
    """Opens the split stream of a task on ``endpoint`` (what an in-process client host holds)."""

    def __init__(self, endpoint: SplitEndpoint) -> None:
        self.endpoint = endpoint

    def __call__(self, task: Task) -> LocalStream:
        return LocalStream(self.endpoint, task.client, task.task_id)
