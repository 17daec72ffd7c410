"""The per-batch seam between a split-learning client and the server side: ``SplitChannel``.

A channel carries :class:`SplitBatch` messages of numpy arrays, so codecs and transports sit in
between: the client calls ``exchange(msg)`` and gets the server's reply (or ``None``). One
channel serves one client for one task; steps are numbered 0, 1, ... within the task.

Message sequence per step (``up`` = client -> server, ``down`` = server -> client)::

    vanilla, splitfed_v1, splitfed_v2   up   activations [A]      + labels y
                                        down gradients   [dL/dA]  + metrics {loss}
    local_loss                          up   activations [A]      + labels y
                                        (no reply: the client never waits)
    ushape                              up   activations [H]      (no labels, ever)
                                        down activations [B]      body output
                                        up   gradients   [dL/dB]
                                        down gradients   [dL/dH]

This maps one-to-one onto the proto's ``SplitMessage``: ``kind`` is the ``activations`` /
``gradients`` arm of the oneof, the direction is the side of the ``Split`` stream, ``tensors`` is
the ``payload`` Encoded frame, ``labels`` the ``labels`` frame, ``metrics`` the map. Open and
close are the transport's business (a task id and round bind the stream to one client).

Codecs are by direction, as a scenario names them: ``up`` (the ``activations:`` spec) encodes
every client -> server tensor, ``down`` (``gradients:``) every server -> client tensor; labels
travel losslessly (``identity``). :class:`LocalChannel` is the in-process transport: it really
encodes and decodes every message (``fedkit.compression.make(spec)``) and counts
``Encoded.nbytes`` by category in :class:`ByteCount`, so bytes match what gRPC would send.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Protocol

import numpy as np

from fedkit import compression
from fedkit.rng import rng as keyed_rng
from fedkit.types import ClientId, Encoded, Params

__all__ = ["ByteCount", "Kind", "LocalChannel", "SplitBatch", "SplitChannel"]

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
_LABELS = compression.make("identity")


class LocalChannel:
    """In-process channel: encode -> count -> decode both ways around a direct server call.

    ``handle(client, msg)`` is the server side (e.g. :meth:`fedkit.split.server.LocalServer.handle`).
    Codec state (error-feedback residuals) is kept per (direction, kind) and restarts when a
    batch's shape changes (the last, smaller batch of an epoch). Codec randomness is keyed by
    (seed, "split", round, client, step, direction, kind).
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
        self._handle, self.client, self.seed, self.round = handle, client, seed, round
        self._codecs = {"up": compression.make(up), "down": compression.make(down)}
        self._state: dict[tuple[str, str], tuple[list[tuple[int, ...]], Any]] = {}
        self.bytes = ByteCount()

    def _send(self, direction: str, msg: SplitBatch) -> SplitBatch:
        codec = self._codecs[direction]
        shapes = [a.shape for a in msg.tensors]
        key = (direction, msg.kind)
        if key not in self._state or self._state[key][0] != shapes:
            self._state[key] = (shapes, codec.init(msg.tensors))
        gen = keyed_rng(self.seed, "split", self.round, self.client, msg.step, direction, msg.kind)
        st, enc = codec.encode(self._state[key][1], msg.tensors, gen)
        self._state[key] = (shapes, st)
        counted = {f"{msg.kind}_{direction}": enc.nbytes}
        labels = None
        if msg.labels is not None:
            lab: Encoded = _LABELS.encode(None, [msg.labels])[1]
            counted[f"labels_{direction}"] = lab.nbytes
            (labels,) = compression.decode(Encoded.from_bytes(lab.to_bytes()))
        self.bytes = self.bytes + replace(ByteCount(), **counted)
        tensors = compression.decode(Encoded.from_bytes(enc.to_bytes()))
        return SplitBatch(msg.step, msg.kind, tensors, labels, dict(msg.metrics))

    def exchange(self, msg: SplitBatch) -> SplitBatch | None:
        reply = self._handle(self.client, self._send("up", msg))
        return None if reply is None else self._send("down", reply)
