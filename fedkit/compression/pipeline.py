"""Pipelines: a structure stage, a value stage and a byte stage composed into one codec.

See :mod:`fedkit.compression.base` for the design. Wire layout of a pipeline payload (before the
optional byte stage)::

    u8 version (=1) | varint count | per array: u8 dtype code, u8 ndim, ndim varint dims
    | raw bytes of the non-float arrays | structure side-info | value-stage bytes

Every size the decoder derives is checked against the buffer before anything is allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.compression import base
from fedkit.compression.bits import Reader, varint
from fedkit.compression.frame import DTYPES, MAX_NDIM, dtype_code, pack_arrays, unpack_arrays
from fedkit.compression.identity import Identity
from fedkit.compression.limits import Like, Limits, resolve
from fedkit.types import DecodeError, Encoded, Params
from fedkit.untrusted import shorten

VERSION = 1
FLOAT_CODES = frozenset(dtype_code(np.dtype(t)) for t in ("float32", "float64", "float16"))

Rebuild = Callable[[list[np.ndarray]], list[np.ndarray]]


class Dense:
    """Default structure stage: every float tensor is one value group."""

    def init(self, like: Sequence[np.ndarray]) -> Any:
        return None

    def encode(
        self, state: Any, xs: list[np.ndarray], rng: np.random.Generator | None
    ) -> tuple[Any, bytes, list[np.ndarray], list[int]]:
        return state, b"", [x.reshape(-1) for x in xs], list(range(len(xs)))

    def decode(
        self, r: Reader, shapes: list[tuple[int, ...]]
    ) -> tuple[list[int], list[int], Rebuild]:
        def rebuild(groups: list[np.ndarray]) -> list[np.ndarray]:
            return [g.reshape(s) for g, s in zip(groups, shapes, strict=True)]

        return [math.prod(s) for s in shapes], list(range(len(shapes))), rebuild


class Float32:
    """Default value stage: values as little-endian float32."""

    def encode_values(
        self, groups: list[np.ndarray], owners: list[int], ntensors: int,
        rng: np.random.Generator | None,
    ) -> list[bytes]:
        return [np.ascontiguousarray(g, dtype="<f4").tobytes() for g in groups]

    def decode_values(
        self, r: Reader, sizes: list[int], owners: list[int], ntensors: int
    ) -> list[np.ndarray]:
        return [r.array("<f4", n, "float32 values") for n in sizes]


@dataclass(frozen=True)
class Pipeline:
    """A composed codec; build it with :func:`fedkit.compression.make`.

    Its encoder state is the structure stage's (PowerSGD's warm-start Q per tensor), else None.
    """

    structure: Any = None
    values: Any = None
    bytes_stage: Any = None

    @property
    def spec(self) -> str:
        stages = (self.structure, self.values, self.bytes_stage)
        return "|".join(s.canonical() for s in stages if s is not None)

    @property
    def lossless(self) -> bool:
        return self.structure is None and self.values is None

    def init(self, like: Params) -> Any:
        if self.structure is None:
            return None
        return self.structure.init([a for a in like if dtype_code(a.dtype) in FLOAT_CODES])

    def encode(
        self, state: Any, x: Params, rng: np.random.Generator | None = None
    ) -> tuple[Any, Encoded]:
        x = [np.asarray(a) for a in x]
        if self.lossless:
            data = pack_arrays(x)
        else:
            parts: list[bytes] = [bytes([VERSION]), varint(len(x))]
            floats: list[np.ndarray] = []
            raws: list[bytes] = []
            for a in x:
                code = dtype_code(a.dtype)
                if a.ndim > MAX_NDIM:
                    raise ValueError(f"array with {a.ndim} dims exceeds the {MAX_NDIM}-dim limit")
                parts.append(bytes([code, a.ndim]) + b"".join(varint(d) for d in a.shape))
                if code in FLOAT_CODES:
                    floats.append(np.ascontiguousarray(a, dtype=np.float32))
                else:
                    raws.append(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
            structure = self.structure or Dense()
            state, side, groups, owners = structure.encode(state, floats, rng)
            values = self.values or Float32()
            parts += raws
            parts.append(side)
            parts += values.encode_values(groups, owners, len(floats), rng)
            data = b"".join(parts)
        if self.bytes_stage is not None:
            data = self.bytes_stage.compress(data)
        return state, Encoded(self.spec, data)

    def decode(self, enc: Encoded, like: Like = None) -> Params:
        if enc.codec != self.spec:
            raise DecodeError(f"codec {self.spec!r} cannot decode a {shorten(enc.codec)} payload")
        limits = resolve(like)
        try:
            return self._decode(enc.data, limits)
        except DecodeError:
            raise
        except (ValueError, IndexError, TypeError, OverflowError, struct.error) as e:
            raise DecodeError(f"{self.spec}: malformed payload ({e})") from None

    def _decode(self, data: bytes, limits: Limits) -> Params:
        if self.bytes_stage is not None:
            data = self.bytes_stage.decompress(data, limits.max_bytes)
        if self.lossless:
            return [a.copy() for a in unpack_arrays(data, limits=limits)]
        r = Reader(data, self.spec)
        version = r.u8("version")
        if version != VERSION:
            raise DecodeError(f"{self.spec}: unknown payload version {version}")
        count = r.varint("array count")
        if count > r.remaining:
            raise DecodeError(f"{self.spec}: claims {count} arrays in {r.remaining} bytes")
        limits.check_count(count, self.spec)
        metas: list[tuple[np.dtype, tuple[int, ...]]] = []
        total = 0
        for i in range(count):
            code, ndim = r.u8("dtype"), r.u8("ndim")
            if code >= len(DTYPES):
                raise DecodeError(f"array {i}: unknown dtype code {code}")
            if ndim > MAX_NDIM:
                raise DecodeError(f"array {i}: {ndim} dims exceeds the {MAX_NDIM}-dim limit")
            shape = tuple(r.varint("dim") for _ in range(ndim))
            limits.check_array(i, DTYPES[code], shape, self.spec)
            total += math.prod(shape)
            limits.check_total(total, f"{self.spec} array {i}")
            metas.append((DTYPES[code], shape))
        out: list[np.ndarray | None] = [None] * count
        float_pos: list[int] = []
        for i, (dt, shape) in enumerate(metas):
            if dtype_code(dt) in FLOAT_CODES:
                float_pos.append(i)
            else:
                out[i] = r.array(dt, math.prod(shape), f"raw array {i}").reshape(shape).copy()
        shapes = [metas[i][1] for i in float_pos]
        sizes, owners, rebuild = (self.structure or Dense()).decode(r, shapes)
        groups = (self.values or Float32()).decode_values(r, sizes, owners, len(shapes))
        r.end()
        for i, a in zip(float_pos, rebuild(groups), strict=True):
            dt = metas[i][0]
            out[i] = a if a.dtype == dt and a.flags.writeable else a.astype(dt)
        return out  # type: ignore[return-value]


def build_pipeline(stages: Sequence[Any]) -> base.Codec:
    """Validate the order and uniqueness of stages and compose them."""
    if len(stages) == 1 and not isinstance(stages[0], base.Stage):
        return stages[0]  # a standalone codec such as ``identity``
    slots: dict[str, Any] = {}
    last = -1
    for st in stages:
        if isinstance(st, Identity):
            continue
        if not isinstance(st, base.Stage):
            raise ValueError(f"codec {type(st).__name__} cannot be part of a pipeline")
        order = base._KIND_ORDER[st.kind]
        if st.kind in slots:
            raise ValueError(
                f"a pipeline takes one {base._KIND_NAME[st.kind]} stage, got "
                f"{slots[st.kind].name!r} and {st.name!r}"
            )
        if order < last:
            if "bytes" in slots:
                raise ValueError(f"{slots['bytes'].name!r} must be the last stage")
            raise ValueError(
                f"{st.name!r} ({base._KIND_NAME[st.kind]}) must come before "
                f"{', '.join(repr(s.name) for s in slots.values())}"
            )
        slots[st.kind] = st
        last = order
    if not slots:
        return Identity()
    return Pipeline(slots.get("structure"), slots.get("values"), slots.get("bytes"))
