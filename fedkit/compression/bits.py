"""Byte-level building blocks shared by the codecs: a bounds-checked reader, LEB128 varints
(scalar and vectorized), and b-bit packing of small integer codes.

Everything here is vectorized numpy: no Python loop runs over elements, only over the (at most
five) byte positions of a varint or the (at most three) bit components of a code.

Bit packing layout (``pack_bits``): codes of ``b`` bits (1..8) are split into components of
4, 2 and 1 bits (b=7 -> 4+2+1, b=5 -> 4+1, ...; b=8 is one byte per code). Each component is
packed densely, little-endian within a byte (code ``i`` of a 2-bit component sits at bits
``2*(i % 4)`` of byte ``i // 4``). The packed size is ``sum(ceil(n * c / 8))``, i.e. at most
two bytes above the ideal ``ceil(n * b / 8)``.
"""

from __future__ import annotations

import struct

import numpy as np
from numpy.typing import DTypeLike

from fedkit.types import DecodeError

MAX_VARINT_BYTES = 5
"""Varints on the wire are at most 5 bytes (values < 2**35): enough for any index gap."""

_COMPONENTS: dict[int, tuple[int, ...]] = {
    1: (1,), 2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 7: (4, 2, 1), 8: (8,),
}


class Reader:
    """Sequential reader over a byte buffer; every read is checked against the buffer length."""

    def __init__(self, buf: bytes | memoryview, what: str = "payload") -> None:
        self.mv = memoryview(buf).cast("B")
        self.off = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.mv) - self.off

    def take(self, n: int, what: str) -> memoryview:
        """The next ``n`` bytes, or :class:`DecodeError` if the buffer is shorter."""
        if n < 0 or n > self.remaining:
            raise DecodeError(
                f"{self.what} truncated: {what} needs {n} bytes, only {self.remaining} left"
            )
        out = self.mv[self.off : self.off + n]
        self.off += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def f32(self, what: str) -> np.float32:
        return np.float32(struct.unpack("<f", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def varint(self, what: str) -> int:
        value = 0
        for i in range(MAX_VARINT_BYTES + 5):  # headers may carry up to 64-bit values
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value
        raise DecodeError(f"{self.what}: varint for {what} is too long")

    def array(self, dtype: DTypeLike, count: int, what: str) -> np.ndarray:
        """``count`` items of ``dtype`` as a read-only view (size checked before any allocation)."""
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(count * dt.itemsize, what), dtype=dt, count=count)

    def end(self) -> None:
        if self.remaining:
            raise DecodeError(f"{self.what}: {self.remaining} trailing bytes")


def varint(value: int) -> bytes:
    """LEB128 encoding of one non-negative int (headers)."""
    if value < 0:
        raise ValueError("varint needs a non-negative value")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varints_nbytes(values: np.ndarray) -> np.ndarray:
    """Bytes each value of a uint64 array takes as a LEB128 varint."""
    v = values.astype(np.uint64, copy=False)
    nb = np.ones(v.shape, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        nb += v >= np.uint64(1 << (7 * j))
    if v.size and int(v.max()) >= 1 << (7 * MAX_VARINT_BYTES):
        raise ValueError(f"varint value exceeds {7 * MAX_VARINT_BYTES} bits")
    return nb


def encode_varints(values: np.ndarray) -> np.ndarray:
    """Vectorized LEB128 of a non-negative integer array -> uint8 array."""
    v = values.astype(np.uint64, copy=False)
    nb = varints_nbytes(v)
    ends = np.cumsum(nb)
    starts = ends - nb
    out = np.empty(int(ends[-1]) if v.size else 0, dtype=np.uint8)
    for j in range(int(nb.max()) if v.size else 0):
        sel = nb > j
        chunk = ((v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        chunk |= (nb[sel] - 1 > j).astype(np.uint8) << np.uint8(7)
        out[starts[sel] + j] = chunk
    return out


def decode_varints(buf: np.ndarray | memoryview, count: int) -> np.ndarray:
    """Inverse of :func:`encode_varints`: exactly ``count`` varints filling ``buf`` -> uint64."""
    b = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    if count == 0:
        if b.size:
            raise DecodeError(f"{b.size} stray bytes where no varint was expected")
        return np.zeros(0, dtype=np.uint64)
    if b.size == 0 or b[-1] >= 0x80:
        raise DecodeError("varint stream truncated (last byte has the continuation bit)")
    ends = np.flatnonzero(b < 0x80)
    if ends.size != count:
        raise DecodeError(f"varint stream holds {ends.size} values, expected {count}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lens = ends - starts + 1
    if int(lens.max()) > MAX_VARINT_BYTES:
        raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")
    vals = (b[starts] & 0x7F).astype(np.uint64)
    for j in range(1, int(lens.max())):
        sel = lens > j
        vals[sel] |= (b[starts[sel] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    return vals


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes :func:`pack_bits` produces for ``n`` codes of ``bits`` bits."""
    return sum(-(-n * c // 8) for c in _COMPONENTS[bits])


def _pack_dense(c: np.ndarray, b: int) -> np.ndarray:
    if b == 8:
        return c
    if b == 1:
        return np.packbits(c, bitorder="little")
    per = 8 // b
    pad = (-c.size) % per
    if pad:
        c = np.concatenate([c, np.zeros(pad, dtype=np.uint8)])
    c = c.reshape(-1, per)
    out = c[:, 0].copy()
    for j in range(1, per):
        out |= c[:, j] << np.uint8(b * j)
    return out


def _unpack_table(b: int) -> np.ndarray:
    # byte -> its 8/b codes, stored as one 2- or 4-byte word so unpacking is a single gather
    allb = np.arange(256, dtype=np.uint8)[:, None]
    codes = (allb >> np.arange(0, 8, b, dtype=np.uint8)) & np.uint8((1 << b) - 1)
    return np.ascontiguousarray(codes).view(np.uint16 if b == 4 else np.uint32).ravel()


_UNPACK = {2: _unpack_table(2), 4: _unpack_table(4)}


def _unpack_dense(p: np.ndarray, n: int, b: int) -> np.ndarray:
    if b == 8:
        return p[:n]
    if b == 1:
        return np.unpackbits(p, count=n, bitorder="little")
    return np.take(_UNPACK[b], p).view(np.uint8)[:n]


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 ``codes`` (each < 2**bits) into ``packed_nbytes(codes.size, bits)`` bytes."""
    if bits not in _COMPONENTS:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    c = np.ascontiguousarray(codes, dtype=np.uint8).ravel()
    comps = _COMPONENTS[bits]
    if len(comps) == 1:
        return _pack_dense(c, bits)
    parts, shift = [], 0
    for w in comps:
        part = c >> np.uint8(shift) if shift else c
        parts.append(_pack_dense(part & np.uint8((1 << w) - 1), w))
        shift += w
    return np.concatenate(parts)


def unpack_bits(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`; ``packed`` must hold exactly ``packed_nbytes(n, bits)``."""
    if packed.size != packed_nbytes(n, bits):
        raise DecodeError(f"packed codes: {packed.size} bytes, expected {packed_nbytes(n, bits)}")
    comps = _COMPONENTS[bits]
    if len(comps) == 1:
        return _unpack_dense(packed, n, bits)
    out = np.zeros(n, dtype=np.uint8)
    off = shift = 0
    for w in comps:
        size = -(-n * w // 8)
        part = _unpack_dense(packed[off : off + size], n, w)
        out |= part << np.uint8(shift) if shift else part
        off += size
        shift += w
    return out
