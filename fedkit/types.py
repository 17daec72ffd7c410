"""Shared values that cross module boundaries: parameters, tasks, replies, encoded payloads."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Params = list[np.ndarray]
"""A model's parameters as an ordered list of arrays (the order of ``module.parameters()``)."""

ClientId = str
"""Stable client name; the key of every per-client random draw."""

Scalar = bool | int | float | str

TaskKind = Literal["train", "evaluate"]

_FRAME_MAGIC = b"FKE1"


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
    """What the server asks one client to do in one round."""

    round: int
    client: ClientId
    kind: TaskKind
    params: Encoded
    config: Mapping[str, Any] = field(default_factory=dict)
    task_id: str = ""


@dataclass(frozen=True)
class Reply:
    """A client's answer to a task. ``update`` is the encoded delta (local - global)."""

    task_id: str
    client: ClientId
    round: int
    num_examples: int = 0
    update: Encoded | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Update:
    """A decoded client update as the aggregator sees it."""

    client: ClientId
    delta: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
