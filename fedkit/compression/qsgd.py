"""QSGD: norm-scaled stochastic quantization with s levels, ``qsgd(levels=s)``.

Each group v is sent as one float32 norm ||v||_2, one sign bit per value and a level
l in 0..s per value (ceil(log2(s+1)) bits), decoded as ||v|| * sign * l / s. The level is
rounded stochastically, so the codec is **unbiased** with variance at most
min(d/s^2, sqrt(d)/s) * ||v||^2. Use it when you want provable unbiasedness without error
feedback (FedPAQ-style FedAvg); with few levels it is cheaper than ``quant`` but noisier on
large groups, since the step is set by the norm rather than by the range.
Reference: Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via
Gradient Quantization and Encoding", NeurIPS 2017.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fedkit.compression.base import Stage, check_int, fix, need_rng, register
from fedkit.compression.bits import Reader, pack_bits, packed_nbytes, unpack_bits


def level_bits(levels: int) -> int:
    """Bits per level code for ``levels`` (0..levels)."""
    return max(1, int(levels).bit_length())


@register("qsgd")
@dataclass(frozen=True)
class QSGD(Stage):
    """Unbiased norm-scaled quantization; ``levels`` in 1..255."""

    name = "qsgd"
    kind = "values"
    shown = ("levels",)
    levels: int = 15

    def __post_init__(self) -> None:
        fix(self, levels=check_int(self.name, "levels", self.levels, 1, 255))

    def encode_values(
        self, groups: list[np.ndarray], owners: list[int], ntensors: int,
        rng: np.random.Generator | None,
    ) -> list[bytes]:
        rng = need_rng(rng, "qsgd")
        s, lb = self.levels, level_bits(self.levels)
        out = []
        for g in groups:
            norm = np.float32(np.linalg.norm(g)) if g.size else np.float32(0)
            if norm > 0 and np.isfinite(norm):
                t = np.abs(g)
                t *= np.float32(s) / norm
                t += rng.random(g.size, dtype=np.float32)
                np.floor(t, out=t)
                np.minimum(t, np.float32(s), out=t)
                lev = t.astype(np.uint8)
            else:
                norm, lev = np.float32(0), np.zeros(g.size, np.uint8)
            signs = np.packbits(g < 0, bitorder="little")
            out += [struct.pack("<f", norm), signs.tobytes(), pack_bits(lev, lb).tobytes()]
        return out

    def decode_values(
        self, r: Reader, sizes: list[int], owners: list[int], ntensors: int
    ) -> list[np.ndarray]:
        s, lb = self.levels, level_bits(self.levels)
        out = []
        for n in sizes:
            norm = r.f32("norm")
            neg = np.unpackbits(r.array(np.uint8, -(-n // 8), "signs"), count=n, bitorder="little")
            lev = unpack_bits(r.array(np.uint8, packed_nbytes(n, lb), "levels"), n, lb)
            if lev.size and int(lev.max()) > s:
                raise ValueError(f"level {int(lev.max())} exceeds levels={s}")
            v = lev.astype(np.float32)
            v *= norm / np.float32(s)
            sign = neg.astype(np.uint32)
            sign <<= np.uint32(31)
            v.view(np.uint32)[...] |= sign  # set the sign bit of negative entries
            out.append(v)
        return out
