"""Decode budgets: what a payload may make its receiver allocate, bounded by the model.

Why this exists: a sparse or low-rank payload legitimately describes a big tensor in a few
bytes, and a zstd frame can expand 30,000-fold (16 KB -> 512 MiB), so the bytes alone do not
bound a decoder's memory. The server knows the layout of every valid update (the global
model's shapes and dtypes), so it decodes with ``decode(enc, like=params)``: every decoder
then checks the declared tensor count, dtypes and shapes against that layout *before*
allocating anything, and zstd stops decompressing (and caps its window) at the largest frame a
valid payload for that layout can have (:func:`frame_bytes`). Peak memory is then the decoded
update itself plus about one frame of the model's size plus a small constant.

Without a layout, ``Limits(max_elements, max_bytes)`` caps the totals instead; ``like=None``
falls back to the module constants ``base.MAX_ELEMENTS`` / ``base.MAX_BYTES``.

    >>> lim = resolve([np.zeros((2, 3), np.float32)])
    >>> lim.max_elements, lim.max_bytes
    (6, 4204)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.types import DecodeError

Layout = tuple[tuple[tuple[int, ...], np.dtype], ...]
"""One ``(shape, dtype)`` per tensor, in the model's order."""

_FLOAT_KINDS = (np.dtype("float16"), np.dtype("float32"), np.dtype("float64"))
FLOAT_SLACK = 4096
"""Per-tensor bytes a lossy pipeline may add beyond 4 bytes per value (codebooks, scales,
index headers): 2 value groups x (256-entry k-means codebook + scales) with margin."""
HEADER_SLACK = 64


@dataclass(frozen=True)
class Limits:
    """What one decode may allocate: an element count, a byte budget for decompressed frames,
    and optionally the exact layout every payload must declare."""

    max_elements: int
    max_bytes: int
    layout: Layout | None = None

    def __post_init__(self) -> None:
        for key in ("max_elements", "max_bytes"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
                raise ValueError(f"Limits.{key} must be a non-negative int, got {v!r}")

    def check_count(self, count: int, what: str) -> None:
        """Refuse a payload that declares the wrong number of tensors."""
        if self.layout is not None and count != len(self.layout):
            raise DecodeError(f"{what}: payload declares {count} tensors, the model has {len(self.layout)}")

    def check_array(self, i: int, dtype: np.dtype, shape: tuple[int, ...], what: str) -> None:
        """Refuse a declared tensor that is not tensor ``i`` of the layout."""
        if self.layout is None:
            return
        want_shape, want_dtype = self.layout[i]
        if tuple(shape) != want_shape or np.dtype(dtype) != want_dtype:
            raise DecodeError(
                f"{what}: tensor {i} declared as {tuple(shape)} {np.dtype(dtype).name}, "
                f"the model has {want_shape} {want_dtype.name}"
            )

    def check_total(self, total: int, what: str) -> None:
        if total > self.max_elements:
            raise DecodeError(
                f"{what}: payload claims {total} elements, over the limit of {self.max_elements}"
            )


Like = Limits | Sequence[Any] | None
"""What ``decode(enc, like=...)`` accepts: ``Limits``, the model's arrays, a list of
``(shape, dtype)`` pairs, or None (module-wide defaults)."""


def layout_of(like: Sequence[Any]) -> Layout:
    """Normalise arrays or ``(shape, dtype)`` pairs to a :data:`Layout`; ValueError if neither."""
    out = []
    for i, item in enumerate(like):
        if isinstance(item, np.ndarray):
            shape, dtype = item.shape, item.dtype
        elif isinstance(item, tuple | list) and len(item) == 2:
            shape, dtype = item
        else:
            raise ValueError(f"like[{i}] must be an array or a (shape, dtype) pair, got {type(item).__name__}")
        try:
            dims = tuple(int(d) for d in shape)
            dt = np.dtype(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"like[{i}]: bad shape or dtype ({e})") from None
        if any(d < 0 for d in dims):
            raise ValueError(f"like[{i}]: negative dimension in {dims}")
        out.append((dims, dt))
    return tuple(out)


def frame_bytes(layout: Layout) -> int:
    """An upper bound on the decompressed frame of any valid payload for ``layout``.

    Lossless frames carry each tensor at its own itemsize; lossy pipelines carry float tensors
    as at most 4 bytes per value plus 1/8 byte of index bitmap plus :data:`FLOAT_SLACK`.
    """
    total = HEADER_SLACK
    for shape, dt in layout:
        n = math.prod(shape)
        raw = dt.itemsize * n + 10 * len(shape) + 2
        lossy = 4 * n + n // 8 + 10 * len(shape) + FLOAT_SLACK if dt in _FLOAT_KINDS else raw
        total += max(raw, lossy)
    return total


CODEC_NAME_SLACK = 1024
"""Bytes allowed for the codec name of a frame, plus :data:`CODEC_NAME_PER_TENSOR` per tensor
(per-tensor settings such as ``powersgd(rank=[8,1,2])`` grow with the model)."""
CODEC_NAME_PER_TENSOR = 16


def payload_bytes(layout: Layout) -> int:
    """The largest valid update *payload* (the ``Encoded`` frame on the wire) for ``layout``,
    whatever the codec: frame head + codec name allowance + :func:`frame_bytes`, plus zstd's
    worst-case expansion of incompressible data (1/128 + 1 KiB, above its real bound). A
    receiver that knows the model refuses a declared size above it before buffering.

        >>> lay = (((2, 3), np.dtype("float32")),)
        >>> payload_bytes(lay) - frame_bytes(lay)
        2102
    """
    frame = frame_bytes(layout)
    name = CODEC_NAME_SLACK + CODEC_NAME_PER_TENSOR * len(layout)
    return 6 + name + frame + frame // 128 + 1024


def resolve(like: Like) -> Limits:
    """The :class:`Limits` a decode runs under (see :data:`Like`)."""
    if isinstance(like, Limits):
        return like
    if like is None:
        from fedkit.compression import base

        return Limits(base.MAX_ELEMENTS, base.MAX_BYTES)
    if isinstance(like, np.ndarray | str | bytes) or not isinstance(like, Sequence):
        raise ValueError(f"like must be Limits, a list of arrays or (shape, dtype) pairs, got {type(like).__name__}")
    layout = layout_of(like)
    return Limits(sum(math.prod(s) for s, _ in layout), frame_bytes(layout), layout)
