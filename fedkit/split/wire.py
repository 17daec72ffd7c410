"""What one split-learning step puts on the wire, and the server end every transport calls.

A :class:`SplitFrame` is one message of a step with its tensors already encoded
(``Encoded`` frames, exactly the bytes a transport carries). The client's half of the codec
work happens before a frame is sent, the server's half in the :class:`SplitEndpoint`, so byte
counts are the server's and identical in every mode:

    client: SplitBatch --encode(up codec)--> SplitFrame ==transport==> endpoint.exchange(...)
    client: SplitBatch <-decode----------- SplitFrame <==transport== (reply frame or None)

In-process the transport is a direct call (``to_bytes``/``from_bytes`` round trip included);
over gRPC it is the ``Split`` stream (protos/fedkit/v1/fedkit.proto). Transports move frames,
they decide nothing: the endpoint checks that the task is open for this client, decodes bounded
by the cut's activation shape, validates, steps the server part and encodes the reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from fedkit.types import ClientId, Encoded, Task

__all__ = ["SplitConnect", "SplitEndpoint", "SplitFrame", "SplitRefused", "SplitStream"]


@dataclass(frozen=True)
class SplitFrame:
    """One split message as encoded bytes; ``labels`` is an identity frame or None."""

    step: int
    kind: Literal["activations", "gradients"]
    payload: Encoded
    labels: Encoded | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.payload.nbytes + (0 if self.labels is None else self.labels.nbytes)


class SplitRefused(ValueError):
    """The endpoint refuses a frame or a stream (bad frame, no such open task, wrong client).

    ``code`` names the gRPC status a transport answers with: ``invalid_argument`` (a bad frame:
    shape, dtype, NaN/Inf, size, step out of order), ``failed_precondition`` (the task is not
    open, or is not this client's, or its round closed), ``resource_exhausted`` (over a cap).
    """

    def __init__(self, message: str, code: str = "invalid_argument") -> None:
        super().__init__(message)
        self.code = code


class SplitEndpoint(Protocol):
    """The server end of split streams; thread-safe (a transport calls it from many threads)."""

    def open(self, client: ClientId, task_id: str) -> None:
        """A client opens the stream of ``task_id``; raises :class:`SplitRefused` unless that
        split task is open and was sent to ``client``."""
        ...

    def exchange(self, client: ClientId, task_id: str, frame: SplitFrame) -> SplitFrame | None:
        """One step message in, the reply frame out (None when the scheme sends none);
        raises :class:`SplitRefused` before touching any state when the frame is bad."""
        ...

    def close(self, client: ClientId, task_id: str, reason: str = "") -> None:
        """The stream ended (``reason`` empty: normally, after the client's last step)."""
        ...

    def max_frame_bytes(self) -> int:
        """The largest frame the endpoint accepts: a transport refuses a declared or buffered
        size above it before buffering (RESOURCE_EXHAUSTED)."""
        ...


class SplitStream(Protocol):
    """The client end of one task's split stream, as a transport provides it."""

    def send(self, frame: SplitFrame, expect_reply: bool = True) -> SplitFrame | None:
        """Send one frame; with ``expect_reply`` block for the server's reply frame (raising
        :class:`SplitRefused` with the server's reason when it refused), else return None at
        once (local_loss: the client never waits on the server)."""
        ...

    def close(self, reason: str = "") -> None:
        """End the stream; after frames sent without waiting, this surfaces a refusal of any
        of them as :class:`SplitRefused`. ``reason`` non-empty: the client gave up."""
        ...


SplitConnect = Callable[[Task], SplitStream]
"""How a client host opens the split stream of a task (in-process: a direct call into the
endpoint; over gRPC: the ``Split`` RPC of the client's session)."""
