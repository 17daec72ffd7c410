"""The per-batch seam between a split-learning client and the server side: ``SplitChannel``.

A channel carries :class:`SplitBatch` messages of numpy arrays, so codecs and transports sit in
between: the client calls ``exchange(msg)`` and gets the server's reply (or ``None``). One
channel serves one client for one task; steps are numbered 0, 1, ... within the task.

Message sequence per step (``up`` = client -> server, ``down`` = server -> client)::

    vanilla, splitfed_v1, splitfed_v2   up   activations [A]      + labels y
                                        down gradients   [dL/dA]  + metrics {loss}
    local_loss                          up   activations [A]      + labels y
                                        (no reply: the client never waits)
    ushape, sfprompt                    up   activations [H]      (no labels, ever)
                                        down activations [B]      body output
                                        up   gradients   [dL/dB]
                                        down gradients   [dL/dH]
    sfprompt's EL2N scoring             up   activations [H], down activations [B] (no backward)

This maps one-to-one onto the proto's ``SplitMessage``: ``kind`` is the ``activations`` /
``gradients`` arm of the oneof, the direction is the side of the ``Split`` stream, ``tensors`` is
the ``payload`` Encoded frame, ``labels`` the ``labels`` frame, ``metrics`` the map. Open and
close are the transport's business (a task id and round bind the stream to one client).

Codecs are by direction, as a scenario names them: ``up`` (the ``activations:`` spec) encodes
every client -> server tensor, ``down`` (``gradients:``) every server -> client tensor; labels
travel losslessly (``identity``). The codec work is split in two halves that meet at a
:class:`~fedkit.split.wire.SplitFrame` (exactly the bytes a transport carries):

* :class:`ClientHalf` encodes up and decodes down (bounded by the shape the client expects);
* :class:`ServerHalf` decodes up (bounded by the cut's shape and the batch size) and encodes
  down, and counts ``Encoded.nbytes`` of every frame by category in :class:`ByteCount`.

:class:`StreamChannel` is the client's channel over any :class:`~fedkit.split.wire.SplitStream`
(in-process or gRPC); :class:`LocalChannel` puts both halves around a direct server call (the
reference loop of :mod:`fedkit.split.schemes`), so bytes match what gRPC would send.
Codec state (error-feedback residuals) is kept per (direction, kind) for one task and restarts
when a batch's shape changes (the last, smaller batch of an epoch); codec randomness comes from
one Generator per task, direction and kind, keyed by (seed, "split", round, client, direction,
kind) and drawn in step order (steps arrive in order in every mode, so every mode draws alike).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

import numpy as np

from fedkit import compression
from fedkit.compression.limits import Limits, frame_bytes
from fedkit.rng import rng as keyed_rng
from fedkit.split.wire import SplitFrame, SplitStream
from fedkit.types import ClientId, DecodeError, Encoded, Params

__all__ = [
    "ByteCount", "ClientHalf", "Kind", "LocalChannel", "ServerHalf", "SplitBatch", "SplitChannel",
    "StreamChannel", "bound", "roundtrip",
]

Kind = Literal["activations", "gradients"]


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class SplitBatch:
    """One message of a split step; ``tensors`` is one array today (the cut is one tensor)."""

    step: int
    kind: Kind
    tensors: Params
    labels: np.ndarray | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


class SplitChannel(Protocol):
    def exchange(self, msg: SplitBatch) -> SplitBatch | None:
        """Deliver ``msg`` to the server side; its reply, or None when the scheme sends none."""
        ...


@dataclass(frozen=True)
class ByteCount:
    """Bytes that crossed a channel, by category (``Encoded.nbytes`` of every frame)."""

    activations_up: int = 0
    activations_down: int = 0  # ushape: body output
    gradients_up: int = 0  # ushape: gradient w.r.t. body output
    gradients_down: int = 0
    labels_up: int = 0

    def __add__(self, other: ByteCount) -> ByteCount:
        return ByteCount(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_metrics(self, prefix: str = "bytes_") -> dict[str, float]:
        return {prefix + f.name: float(getattr(self, f.name)) for f in fields(self)}


Handler = Callable[[ClientId, SplitBatch], "SplitBatch | None"]
_CATEGORIES = tuple(f.name for f in fields(ByteCount))
_LABELS = compression.make("identity")


def bound(shape: tuple[int, ...], dtype: Any = np.float32) -> Limits:
    """What decoding one tensor of at most ``shape`` may allocate (the batch dim may be smaller)."""
    return _bound(tuple(int(d) for d in shape), np.dtype(dtype))


@functools.lru_cache(maxsize=256)
def _bound(shape: tuple[int, ...], dtype: np.dtype) -> Limits:
    return Limits(math.prod(shape), frame_bytes(((shape, dtype),)))


def _wire(enc: Encoded) -> Encoded:
    """``Encoded.from_bytes(enc.to_bytes())`` without the copies: the same codec name and the
    same immutable bytes (a mutable buffer is copied, as the wire would)."""
    return enc if type(enc.data) is bytes else Encoded(enc.codec, bytes(enc.data))


def roundtrip(frame: SplitFrame) -> SplitFrame:
    """``frame`` as the receiver sees it after the wire: exactly the bytes ``to_bytes`` would
    carry (``Encoded.nbytes`` counts them), nothing shared with the sender but immutable bytes."""
    labels = None if frame.labels is None else _wire(frame.labels)
    return SplitFrame(frame.step, frame.kind, _wire(frame.payload), labels, dict(frame.metrics))


class _Encoder:
    """One direction's codec with its per-kind state and keyed Generator (one per kind, for the
    task: built at its first message, drawn in step order)."""

    def __init__(self, spec: str, direction: str, client: ClientId, seed: int, round: int) -> None:
        self.codec = compression.make(spec)
        self.direction, self.client, self.seed, self.round = direction, client, seed, round
        self._state: dict[str, tuple[list[tuple[int, ...]], Any]] = {}
        self._gens: dict[str, np.random.Generator] = {}

    def encode(self, msg: SplitBatch) -> SplitFrame:
        shapes = [a.shape for a in msg.tensors]
        if msg.kind not in self._state or self._state[msg.kind][0] != shapes:
            self._state[msg.kind] = (shapes, self.codec.init(msg.tensors))
        gen = self._gens.get(msg.kind)
        if gen is None:
            gen = self._gens[msg.kind] = keyed_rng(self.seed, "split", self.round, self.client, self.direction, msg.kind)
        st, enc = self.codec.encode(self._state[msg.kind][1], msg.tensors, gen)
        self._state[msg.kind] = (shapes, st)
        labels = None if msg.labels is None else _LABELS.encode(None, [msg.labels])[1]
        return SplitFrame(msg.step, msg.kind, enc, labels, dict(msg.metrics))


def _decode(frame: SplitFrame, tensors: Limits, labels: Limits | None) -> SplitBatch:
    """The batch a frame carries, decoded within ``tensors`` (and ``labels``) limits; DecodeError
    (a ValueError) names what is wrong. ``labels=None``: a labels frame is refused."""
    xs = compression.decode(frame.payload, like=tensors)
    y = None
    if frame.labels is not None:
        if labels is None:
            raise DecodeError(f"step {frame.step}: unexpected labels frame with the {frame.kind}")
        ys = compression.decode(frame.labels, like=labels)
        if len(ys) != 1:
            raise DecodeError(f"step {frame.step}: labels frame holds {len(ys)} tensors, expected 1")
        y = ys[0]
    return SplitBatch(frame.step, frame.kind, xs, y, dict(frame.metrics))


class ClientHalf:
    """The client's codec work: encode every up message, decode every down frame."""

    def __init__(self, up: str, client: ClientId, *, seed: int = 0, round: int = 0) -> None:
        self._up = _Encoder(up, "up", client, seed, round)

    def encode(self, msg: SplitBatch) -> SplitFrame:
        return self._up.encode(msg)

    def decode(self, frame: SplitFrame, shape: tuple[int, ...]) -> SplitBatch:
        """A down frame, bounded by the reply ``shape`` the client expects (no labels come down)."""
        return _decode(frame, bound(shape), None)


class ServerHalf:
    """The server's codec work for one client's task: decode up, encode down, count bytes."""

    def __init__(self, down: str, client: ClientId, *, seed: int = 0, round: int = 0) -> None:
        self._down = _Encoder(down, "down", client, seed, round)
        self._counts = dict.fromkeys(_CATEGORIES, 0)

    @property
    def bytes(self) -> ByteCount:
        return ByteCount(**self._counts)

    def decode(self, frame: SplitFrame, tensors: Limits, labels: Limits | None) -> SplitBatch:
        msg = _decode(frame, tensors, labels)
        self._count(frame, "up")
        return msg

    def encode(self, msg: SplitBatch) -> SplitFrame:
        frame = self._down.encode(msg)
        self._count(frame, "down")
        return frame

    def _count(self, frame: SplitFrame, direction: str) -> None:
        self._counts[f"{frame.kind}_{direction}"] += frame.payload.nbytes
        if frame.labels is not None:
            self._counts[f"labels_{direction}"] += frame.labels.nbytes


def _reply_shape(msg: SplitBatch, sent: tuple[int, ...] | None, body: tuple[int, ...] | None) -> tuple[int, ...]:
    """The shape of the server's reply to ``msg``: body output (ushape activations), else the
    gradient w.r.t. what the client sent first in this step."""
    a = msg.tensors[0].shape if msg.tensors else ()
    if msg.kind == "activations":
        return (a[0], *body) if body is not None and a else tuple(a)
    return tuple(sent) if sent is not None else tuple(a)


class StreamChannel:
    """The client's :class:`SplitChannel` over a transport's :class:`SplitStream`.

    ``expect_reply`` False (local_loss): frames go up without waiting. ``body_shape`` (ushape):
    the per-sample shape of the body output the server sends down.
    """

    def __init__(
        self, stream: SplitStream, half: ClientHalf, *, expect_reply: bool = True,
        body_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.stream, self.half, self.expect_reply, self.body_shape = stream, half, expect_reply, body_shape
        self._sent: tuple[int, ...] | None = None

    def exchange(self, msg: SplitBatch) -> SplitBatch | None:
        if msg.kind == "activations" and msg.tensors:
            self._sent = tuple(msg.tensors[0].shape)
        reply = self.stream.send(self.half.encode(msg), expect_reply=self.expect_reply)
        if not self.expect_reply:
            return None
        if reply is None:
            raise ValueError(f"step {msg.step}: the server sent no reply")
        return self.half.decode(reply, _reply_shape(msg, self._sent, self.body_shape))


class LocalChannel:
    """In-process channel: both codec halves around a direct server call, with a wire round trip.

    ``handle(client, msg)`` is the server side (e.g. :meth:`fedkit.split.server.LocalServer.handle`);
    ``bytes`` counts every frame, by category.
    """

    def __init__(
        self,
        handle: Handler,
        client: ClientId,
        *,
        up: str = "identity",
        down: str = "identity",
        seed: int = 0,
        round: int = 0,
    ) -> None:
        self._handle, self.client = handle, client
        self._client = ClientHalf(up, client, seed=seed, round=round)
        self._server = ServerHalf(down, client, seed=seed, round=round)

    @property
    def bytes(self) -> ByteCount:
        return self._server.bytes

    def exchange(self, msg: SplitBatch) -> SplitBatch | None:
        shape = tuple(msg.tensors[0].shape) if msg.tensors else (0,)
        labels = None if msg.labels is None else bound(msg.labels.shape, np.int64)
        got = self._server.decode(roundtrip(self._client.encode(msg)), bound(shape), labels)
        reply = self._handle(self.client, got)
        if reply is None:
            return None
        back = self._server.encode(reply)
        return self._client.decode(roundtrip(back), tuple(reply.tensors[0].shape) if reply.tensors else (0,))
