"""Scaled sign: ``sign``, 1 bit per value plus one float32 scale (mean |x|) per group.

The decoder returns mean(|x|) * sign(x) (zeros count as positive). This is the compressor of
EF-signSGD: biased, so pair it with error feedback (``ef:sign``), which then matches SGD on
standard vision benchmarks at ~32x compression. After a sparsifier (``topk(...)|sign``) it
sends just the signs of the kept values. Reference: Karimireddy, Rebjock, Stich, Jaggi,
"Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019
(signSGD: Bernstein et al., ICML 2018).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fedkit.compression.base import Stage, register
from fedkit.compression.bits import Reader


@register("sign")
@dataclass(frozen=True)
class Sign(Stage):
    """1-bit scaled sign with the l1 scale ||x||_1 / d per group."""

    name = "sign"
    kind = "values"

    def encode_values(
        self, groups: list[np.ndarray], owners: list[int], ntensors: int,
        rng: np.random.Generator | None,
    ) -> list[bytes]:
        out = []
        for g in groups:
            scale = np.float32(np.mean(np.abs(g), dtype=np.float64)) if g.size else 0.0
            out += [struct.pack("<f", scale), np.packbits(g < 0, bitorder="little").tobytes()]
        return out

    def decode_values(
        self, r: Reader, sizes: list[int], owners: list[int], ntensors: int
    ) -> list[np.ndarray]:
        out = []
        for n in sizes:
            scale = r.f32("scale")
            neg = np.unpackbits(r.array(np.uint8, -(-n // 8), "signs"), count=n, bitorder="little")
            out.append(np.array([scale, -scale], dtype=np.float32)[neg])
        return out
