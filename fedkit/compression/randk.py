"""Random-k sparsification: ``randk(ratio=0.01, scale=False)``; indices come from a seed.

Keeps k = round(ratio * n) uniformly random entries per tensor. Only an 8-byte seed travels:
the decoder regenerates the positions, so the payload is the values alone (k * 4 bytes, or
fewer behind a value stage). With ``scale=True`` the decoder multiplies by n/k, which makes
the codec **unbiased** (at the price of d/k times more variance); without scaling it is biased
and wants error feedback. Use it when indices would dominate the payload or when unbiasedness
matters more than error (top-k has lower error at the same size). Positions use numpy's
``Generator.choice``, so encoder and decoder need the same numpy major version.
Reference: Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018 (rand-k);
Konecny et al., "Federated Learning: Strategies for Improving Communication Efficiency", 2016.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.compression.base import Stage, check_bool, check_ratio, fix, need_rng, register, setting
from fedkit.compression.bits import Reader
from fedkit.compression.topk import keep_count, scatter


def random_indices(seed: int, tensor: int, n: int, k: int) -> np.ndarray:
    """Sorted k-of-n positions for (seed, tensor): identical on encoder and decoder."""
    gen = np.random.default_rng([seed, tensor])
    idx = gen.choice(n, size=k, replace=False, shuffle=False).astype(np.int64)
    idx.sort()
    return idx


@register("randk")
@dataclass(frozen=True)
class RandK(Stage):
    """Seeded random sparsifier; ``scale=True`` rescales by n/k for an unbiased estimate."""

    name = "randk"
    kind = "structure"
    shown = ("ratio",)
    ratio: float | tuple[float, ...] = 0.01
    scale: bool = False

    def __post_init__(self) -> None:
        fix(
            self,
            ratio=check_ratio(self.name, "ratio", self.ratio, per=True),
            scale=check_bool(self.name, "scale", self.scale),
        )

    def init(self, like: list[np.ndarray]) -> Any:
        return None

    def _ks(self, sizes: list[int]) -> list[int]:
        return [
            keep_count(n, setting(self.ratio, i, len(sizes), "randk ratio"))
            for i, n in enumerate(sizes)
        ]

    def encode(
        self, state: Any, xs: list[np.ndarray], rng: np.random.Generator | None
    ) -> tuple[Any, bytes, list[np.ndarray], list[int]]:
        seed = int(need_rng(rng, "randk").integers(0, 1 << 63))
        ks = self._ks([x.size for x in xs])
        groups = [
            x.reshape(-1)[random_indices(seed, i, x.size, k)]
            for i, (x, k) in enumerate(zip(xs, ks, strict=True))
        ]
        return state, struct.pack("<Q", seed), groups, list(range(len(xs)))

    def decode(
        self, r: Reader, shapes: list[tuple[int, ...]]
    ) -> tuple[list[int], list[int], Any]:
        seed = r.u64("seed")
        sizes = [math.prod(s) for s in shapes]
        ks = self._ks(sizes)

        def rebuild(groups: list[np.ndarray]) -> list[np.ndarray]:
            out = []
            for i, (s, n, k, g) in enumerate(zip(shapes, sizes, ks, groups, strict=True)):
                if self.scale and k:
                    g = g * np.float32(n / k)
                out.append(scatter(s, random_indices(seed, i, n, k), g))
            return out

        return ks, list(range(len(shapes))), rebuild
