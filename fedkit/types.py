"""Shared values that cross module boundaries: parameters, tasks, replies, encoded payloads."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

Params = list[np.ndarray]
"""A model's parameters as an ordered list of arrays (the order of ``module.parameters()``)."""

ClientId = str
"""Stable client name; the key of every per-client random draw."""

Scalar = bool | int | float | str

TaskKind = str
"""What a task asks for: "train" and "evaluate" today; split-learning steps and secure-aggregation
stages add kinds (the client runtime keeps the registry of kinds it can serve)."""

_FRAME_MAGIC = b"FKE1"


class Strict(BaseModel):
    """Base of every configuration: frozen, and unknown keys are errors (a misplaced setting
    must not vanish silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DecodeError(ValueError):
    """A payload could not be decoded; the message names what is wrong."""


@dataclass(frozen=True)
class Encoded:
    """Bytes produced by a codec: exactly what crosses the wire.

    ``codec`` is the spec string of the pipeline that produced ``data``; decoding looks it up
    in the codec registry, so the receiver needs no other state.
    """

    codec: str
    data: bytes

    def to_bytes(self) -> bytes:
        name = self.codec.encode()
        return _FRAME_MAGIC + struct.pack("<H", len(name)) + name + self.data

    @classmethod
    def from_bytes(cls, buf: bytes | memoryview) -> Encoded:
        buf = memoryview(buf)
        if len(buf) < 6 or bytes(buf[:4]) != _FRAME_MAGIC:
            raise DecodeError("payload is not a fedkit encoded frame (bad magic or truncated)")
        (n,) = struct.unpack_from("<H", buf, 4)
        if len(buf) < 6 + n:
            raise DecodeError("payload truncated inside the codec name")
        try:
            codec = bytes(buf[6 : 6 + n]).decode()
        except UnicodeDecodeError as e:
            raise DecodeError("codec name is not UTF-8") from e
        return cls(codec=codec, data=bytes(buf[6 + n :]))

    @property
    def nbytes(self) -> int:
        """Size of ``to_bytes()``: the figure every byte counter reports."""
        return len(_FRAME_MAGIC) + 2 + len(self.codec.encode()) + len(self.data)


@dataclass(frozen=True)
class Task:
    """What the server asks one client to do in one round.

    ``config`` is the kind's typed, frozen configuration (``fedkit.runtime.task``); on the wire it
    is its JSON object. ``version`` is the global model version ``params`` encode (the number of
    aggregations behind it), echoed by the reply so the server knows how stale an update is.
    """

    round: int
    client: ClientId
    kind: TaskKind
    params: Encoded
    config: Any = field(default_factory=dict)
    task_id: str = ""
    version: int = 0


@dataclass(frozen=True)
class Reply:
    """A client's answer to a task. ``update`` is the encoded delta (local - global).

    ``delta`` is the raw update inside a client, before its uplink mod encodes it; it never
    crosses a wire (a reply leaving a client has ``delta=None``). ``version`` echoes the task's.
    """

    task_id: str
    client: ClientId
    round: int
    num_examples: int = 0
    update: Encoded | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    version: int = 0
    delta: Params | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Update:
    """A decoded client update as the aggregator sees it; ``version`` is the model it trained on."""

    client: ClientId
    delta: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    version: int = 0


@dataclass(frozen=True)
class Arrival:
    """A task settled, at ``time`` on the Link's clock (simulated in-process, real over gRPC).

    ``reply`` is None when no usable answer came (the client disconnected, dropped out, or the
    transport refused its reply: ``reason`` says why). ``accepted`` is what the transport's
    early acceptance check already produced from the reply (the decoded update), so a deployed
    server decodes each update once; None where nothing was checked yet.
    """

    time: float
    task: Task
    reply: Reply | None
    reason: str = ""
    accepted: Any = None
