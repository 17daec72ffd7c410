"""Clustering quantization: ``kmeans(clusters=k, iters=4)``, a k-entry codebook per group.

Lloyd's algorithm on the 1-D values of each group (centroids initialised at
linspace(min, max, k), vectorized: assignment by ``searchsorted`` on centroid midpoints, update
by ``bincount``; an empty cluster is re-seeded at the worst-served value; groups above 1 M
values iterate on a strided sample of 1 M and assign all values at the end), then one float32
centroid per cluster plus ceil(log2 k)-bit packed assignments. Unlike uniform quantization
the levels follow the value distribution, so few clusters (3-16) represent heavy-tailed deltas
well. Biased: use error feedback. After
``topk`` it gives the FedZip pipeline (top-z sparsification + 3-cluster k-means).
Reference: Malekijoo et al., "FedZip: A Compression Framework for Communication-Efficient
Federated Learning", arXiv 2102.01593 (2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedkit.compression.base import Stage, check_int, fix, register
from fedkit.compression.bits import Reader, pack_bits, packed_nbytes, unpack_bits

SAMPLE = 1 << 20
"""Lloyd iterations run on a strided sample of at most this many values per group."""


def assign(g: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted centroids ``c`` for every value (uint8)."""
    bounds = (c[1:] + c[:-1]) * np.float32(0.5)
    if c.size > 32:
        return np.searchsorted(bounds, g).astype(np.uint8)
    out = np.zeros(g.size, np.uint8)
    for b in bounds:  # k-1 vectorized comparisons beat a binary search for small k
        out += g > b
    return out


def lloyd(g: np.ndarray, clusters: int, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means -> (sorted float32 codebook, uint8 assignments of all of ``g``)."""
    if g.size == 0:
        return np.zeros(clusters, np.float32), np.zeros(0, np.uint8)
    c = np.linspace(g.min(), g.max(), clusters, dtype=np.float32)
    s = g[:: -(-g.size // SAMPLE)]
    for _ in range(iters):
        a = assign(s, c)
        count = np.bincount(a, minlength=clusters)
        total = np.bincount(a, weights=s, minlength=clusters)
        new = np.where(count > 0, total / np.maximum(count, 1), c).astype(np.float32)
        empty = np.flatnonzero(count == 0)
        if empty.size:  # re-seed one empty cluster at the worst-served value
            err = np.abs(s - new[a])
            worst = int(np.argmax(err))
            if err[worst] > 0:
                new[empty[0]] = s[worst]
        new.sort()
        if np.array_equal(new, c):
            break
        c = new
    return c, assign(g, c)


@register("kmeans")
@dataclass(frozen=True)
class KMeans(Stage):
    """k-means codebook quantization; ``clusters`` in 2..256, ``iters`` Lloyd steps."""

    name = "kmeans"
    kind = "values"
    shown = ("clusters",)
    clusters: int = 3
    iters: int = 4

    def __post_init__(self) -> None:
        fix(
            self,
            clusters=check_int(self.name, "clusters", self.clusters, 2, 256),
            iters=check_int(self.name, "iters", self.iters, 0, 100),
        )

    @property
    def bits(self) -> int:
        return (self.clusters - 1).bit_length()

    def encode_values(
        self, groups: list[np.ndarray], owners: list[int], ntensors: int,
        rng: np.random.Generator | None,
    ) -> list[bytes]:
        out = []
        for g in groups:
            c, assign = lloyd(g, self.clusters, self.iters)
            out += [c.astype("<f4").tobytes(), pack_bits(assign, self.bits).tobytes()]
        return out

    def decode_values(
        self, r: Reader, sizes: list[int], owners: list[int], ntensors: int
    ) -> list[np.ndarray]:
        out = []
        for n in sizes:
            c = r.array("<f4", self.clusters, "codebook")
            packed = r.array(np.uint8, packed_nbytes(n, self.bits), "assignments")
            assign = unpack_bits(packed, n, self.bits)
            if assign.size and int(assign.max()) >= self.clusters:
                raise ValueError(f"assignment {int(assign.max())} >= clusters={self.clusters}")
            out.append(c.astype(np.float32)[assign])
        return out
