"""Half-precision casts: ``fp16`` (IEEE binary16) and ``bf16`` (bfloat16), 2 bytes per value.

Use ``fp16`` when values are moderate (|x| < 65504; it keeps 11 significant bits, values below
~6e-8 flush to zero), e.g. model deltas after clipping; it is lossless on values already
representable in fp16. Use ``bf16`` when the range matters more than precision (8 exponent bits
like fp32, 8 significant bits). Both halve the payload with no state and no bias worth error
feedback. Reference: Micikevicius et al., "Mixed Precision Training", ICLR 2018 (fp16);
Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", arXiv 1905.12322 (bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedkit.compression.base import Stage, register
from fedkit.compression.bits import Reader


@register("fp16")
@dataclass(frozen=True)
class FP16(Stage):
    """Values as IEEE float16 (round to nearest even). Overflow beyond 65504 becomes inf."""

    name = "fp16"
    kind = "values"

    def encode_values(
        self, groups: list[np.ndarray], owners: list[int], ntensors: int,
        rng: np.random.Generator | None,
    ) -> list[bytes]:
        return [g.astype("<f2").tobytes() for g in groups]

    def decode_values(
        self, r: Reader, sizes: list[int], owners: list[int], ntensors: int
    ) -> list[np.ndarray]:
        return [r.array("<f2", n, "fp16 values").astype(np.float32) for n in sizes]


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u >> np.uint32(16)) & np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += u
    h = (rounded >> np.uint32(16)).astype("<u2")
    nan = np.isnan(x)
    if nan.any():
        h[nan] = 0x7FC0
    return h


def from_bf16(h: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


@register("bf16")
@dataclass(frozen=True)
class BF16(Stage):
    """Values as bfloat16: the upper half of float32, rounded to nearest even."""

    name = "bf16"
    kind = "values"

    def encode_values(
        self, groups: list[np.ndarray], owners: list[int], ntensors: int,
        rng: np.random.Generator | None,
    ) -> list[bytes]:
        return [to_bf16(g).tobytes() for g in groups]

    def decode_values(
        self, r: Reader, sizes: list[int], owners: list[int], ntensors: int
    ) -> list[np.ndarray]:
        return [from_bf16(r.array("<u2", n, "bf16 values")) for n in sizes]
