"""Float updates <-> integers mod 2^b, so masked vectors add exactly and the sum decodes back.

Reference: Bonawitz et al., CCS 2017, section 4 (inputs in Z_R); the clip / shift / stochastic
rounding scheme follows Flower's SecAgg+ quantisation (Apache-2.0), written anew here.

Each value is clipped to [-clip, clip], shifted to [0, 2 clip], scaled by levels / (2 clip) and
rounded stochastically (unbiased: E[q] = the scaled value), giving an integer in 0..levels.
Masks and sums live in Z_{2^bits} (uint32 or uint64 words, wrapping natively in numpy). The sum
of n such integers is at most n * levels, so ``n * levels < 2^bits`` is required: then the sum
mod 2^bits *is* the integer sum and decodes exactly as sum * step - n * clip. ``for_clients``
picks the largest ``levels`` that fits a given number of clients; per-value error of one
client is below step = 2 clip / levels (7.5e-7 for clip = 8, bits = 32, 200 clients).

Choosing ``clip``: updates outside the range are clipped (biased), so set it a little above the
largest coordinate of a typical update; precision then is ``2 clip / levels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_DTYPES: dict[int, type[np.unsignedinteger]] = {32: np.uint32, 64: np.uint64}


@dataclass(frozen=True)
class FieldSpec:
    """Quantisation range and modulus. ``levels`` + 1 integer steps span [-clip, clip]."""

    clip: float
    levels: int
    bits: int = 32

    def __post_init__(self) -> None:
        if self.bits not in _DTYPES:
            raise ValueError(f"field: bits must be one of {sorted(_DTYPES)}, got {self.bits}")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"field: clip must be a positive finite float, got {self.clip}")
        if not 1 <= int(self.levels) < 2**self.bits:
            raise ValueError(f"field: levels must be in 1..2^{self.bits}-1, got {self.levels}")

    @classmethod
    def for_clients(cls, n: int, clip: float, bits: int = 32) -> FieldSpec:
        """The finest levels such that the sum of ``n`` clients cannot wrap mod 2^bits.

        >>> FieldSpec.for_clients(200, 8.0).levels
        21474836
        """
        if n < 1:
            raise ValueError(f"field: number of clients must be >= 1, got {n}")
        return cls(clip=float(clip), levels=(2**bits - 1) // n, bits=bits)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return _DTYPES[self.bits]

    @property
    def step(self) -> float:
        """Float value of one integer step."""
        return 2.0 * self.clip / self.levels

    def max_clients(self) -> int:
        """Most clients whose sum still fits: ``n * levels <= 2^bits - 1``."""
        return (2**self.bits - 1) // self.levels

    def check_clients(self, n: int) -> None:
        if n > self.max_clients():
            raise ValueError(
                f"field: {n} clients x {self.levels} levels overflows 2^{self.bits}; "
                f"at most {self.max_clients()} clients (use FieldSpec.for_clients)")


def quantize(spec: FieldSpec, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat float array -> integers in 0..levels (dtype of the field), stochastically rounded."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("field: update contains NaN or inf")
    scaled = (np.clip(x, -spec.clip, spec.clip) + spec.clip) * (spec.levels / (2.0 * spec.clip))
    q = np.floor(scaled + rng.random(scaled.shape))
    return np.clip(q, 0, spec.levels).astype(spec.dtype)


def dequantize_sum(spec: FieldSpec, total: np.ndarray, n: int) -> np.ndarray:
    """The float sum of ``n`` clients' values from the integer sum of their quantised values."""
    spec.check_clients(n)
    total = np.asarray(total)
    if total.dtype != spec.dtype:
        raise ValueError(f"field: sum must be {np.dtype(spec.dtype)}, got {total.dtype}")
    return total.astype(np.float64) * spec.step - n * spec.clip


def flatten(params: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate a model's arrays into one float64 vector (the order is kept)."""
    if not params:
        return np.zeros(0)
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in params])


def unflatten(vec: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Split ``vec`` back into arrays shaped and typed like ``like``."""
    sizes = [int(np.asarray(p).size) for p in like]
    if vec.size != sum(sizes):
        raise ValueError(f"field: vector has {vec.size} values, the model has {sum(sizes)}")
    out, at = [], 0
    for p, s in zip(like, sizes, strict=True):
        p = np.asarray(p)
        out.append(vec[at : at + s].reshape(p.shape).astype(p.dtype))
        at += s
    return out
