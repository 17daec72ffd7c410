"""Raw tensor framing: arrays as dtype + shape + little-endian bytes. No pickle, ever.

Layout: ``u32 count``, then per array ``u8 dtype-code, u8 ndim, ndim x u64 dims``, then the
arrays' bytes back to back in C order. Unpacking validates every length so a hostile or
truncated payload raises :class:`DecodeError` instead of reading out of bounds.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from fedkit.compression.limits import Limits
from fedkit.types import DecodeError, Params

DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t).newbyteorder("<")
    for t in (
        "float32", "float64", "float16", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool",
    )
)
_CODE = {d: i for i, d in enumerate(DTYPES)}
MAX_NDIM = 8


def dtype_code(dtype: np.dtype) -> int:
    d = np.dtype(dtype).newbyteorder("<")
    try:
        return _CODE[d]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot travel on the wire") from None


def pack_arrays(arrays: Params) -> bytes:
    head = [struct.pack("<I", len(arrays))]
    for a in arrays:
        if a.ndim > MAX_NDIM:
            raise ValueError(f"array with {a.ndim} dims exceeds the {MAX_NDIM}-dim limit")
        head.append(struct.pack(f"<BB{a.ndim}Q", dtype_code(a.dtype), a.ndim, *a.shape))
    # memoryviews, not .tobytes(): the join is the only copy of the tensor data
    body = [
        memoryview(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        for a in arrays
    ]
    return b"".join([*head, *body])


def packed_nbytes(arrays: Params, itemsize: int | None = None) -> int:
    """``len(pack_arrays(arrays))`` without packing; ``itemsize`` overrides every array's
    (4: the size the same arrays would have as float32)."""
    head = 4 + sum(2 + 8 * a.ndim for a in arrays)
    return head + sum(a.size * (itemsize or a.dtype.itemsize) for a in arrays)


def unpack_arrays(
    buf: bytes | memoryview, copy: bool = False, limits: Limits | None = None
) -> Params:
    """Inverse of :func:`pack_arrays`. Arrays view ``buf`` (read-only) unless ``copy``.

    With ``limits`` the header must declare the layout's tensors (checked before any copy)
    and at most ``limits.max_elements`` elements in total.
    """
    mv = memoryview(buf)
    try:
        (count,) = struct.unpack_from("<I", mv, 0)
        if limits is not None:
            limits.check_count(count, "tensor frame")
        off = 4
        specs = []
        for i in range(count):
            code, ndim = struct.unpack_from("<BB", mv, off)
            off += 2
            if code >= len(DTYPES):
                raise DecodeError(f"array {i}: unknown dtype code {code}")
            if ndim > MAX_NDIM:
                raise DecodeError(f"array {i}: {ndim} dims exceeds the {MAX_NDIM}-dim limit")
            shape = struct.unpack_from(f"<{ndim}Q", mv, off)
            off += 8 * ndim
            if limits is not None:
                limits.check_array(i, DTYPES[code], shape, "tensor frame")
            specs.append((DTYPES[code], shape))
    except struct.error as e:
        raise DecodeError(f"tensor header truncated: {e}") from None
    if limits is not None:
        limits.check_total(sum(math.prod(s) for _, s in specs), "tensor frame")
    out: Params = []
    for i, (dtype, shape) in enumerate(specs):
        n = math.prod(shape)  # exact Python int: no uint64 wrap-around on hostile dims
        size = n * dtype.itemsize
        if off + size > len(mv):
            raise DecodeError(
                f"array {i}: needs {size} bytes for shape {tuple(shape)} {dtype.name}, "
                f"only {len(mv) - off} left"
            )
        a = np.frombuffer(mv, dtype=dtype, count=n, offset=off).reshape(shape)
        out.append(a.copy() if copy else a)
        off += size
    if off != len(mv):
        raise DecodeError(f"{len(mv) - off} trailing bytes after the last array")
    return out
