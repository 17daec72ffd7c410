"""Top-k sparsification: ``topk(ratio=0.01, scope='tensor'|'global')``.

Keeps the k = round(ratio * n) largest-magnitude entries (per tensor, or over the whole update
with ``scope=global`` so layers compete for the budget) and sends their positions and values.
Positions use whichever is smaller per tensor: a bitmap (n/8 bytes) or the gaps between sorted
indices as LEB128 varints (~1.3 bytes per index at 1% density). Values are float32 unless a
value stage follows (``topk(ratio=0.01)|quant(bits=8)``). Top-k is biased: run it with error
feedback (``ef:topk(...)``), which provably recovers SGD's rate (Mem-SGD). Use it for the
largest savings at a controlled error (1% density with 8-bit values is ~250x smaller than
fp32). References: Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018;
Aji & Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.compression.base import Stage, check_choice, check_ratio, fix, register, setting
from fedkit.compression.bits import (
    Reader,
    decode_varints,
    encode_varints,
    varint,
    varints_nbytes,
)
from fedkit.types import DecodeError

_BITMAP, _GAPS, _ALL = 0, 1, 2
_SAMPLE = 1 << 16


def keep_count(n: int, ratio: float) -> int:
    """Entries kept out of ``n`` at ``ratio``: round(ratio * n), at least 1 if n > 0."""
    return min(n, max(1, round(ratio * n))) if n > 0 else 0


def top_indices(a: np.ndarray, k: int) -> np.ndarray:
    """Sorted int64 indices of the ``k`` largest entries of the 1-D array ``a``.

    Large arrays first estimate the threshold from a strided sample, then run an exact
    selection among the few candidates above it (falls back to a full ``argpartition``).
    """
    n = a.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = None
    if n > 8 * _SAMPLE and k < n // 8:
        sample = a[:: n // _SAMPLE]
        m = sample.size
        q = math.ceil(k * m / n * 1.25 + 16)
        if q < m:
            t = np.partition(sample, m - q)[m - q]
            cand = np.flatnonzero(a >= t)
            if k <= cand.size < n // 4:
                sub = np.argpartition(a[cand], cand.size - k)[cand.size - k :]
                idx = cand[sub]
    if idx is None:
        idx = np.argpartition(a, n - k)[n - k :]
    idx = idx.astype(np.int64, copy=False)
    idx.sort()
    return idx


def encode_indices(idx: np.ndarray, n: int) -> bytes:
    """Sorted unique indices < n -> ``varint k | u8 mode | payload`` (bitmap, gaps or all)."""
    k = idx.size
    if k == 0:
        return varint(0)
    if k == n:
        return varint(k) + bytes([_ALL])
    gaps = np.diff(idx, prepend=-1) - 1
    nb = int(varints_nbytes(gaps).sum())
    if -(-n // 8) <= nb + len(varint(nb)):
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        return varint(k) + bytes([_BITMAP]) + np.packbits(mask, bitorder="little").tobytes()
    return varint(k) + bytes([_GAPS]) + varint(nb) + encode_varints(gaps).tobytes()


def decode_indices(r: Reader, n: int, what: str) -> np.ndarray:
    """Inverse of :func:`encode_indices`, validating every count and bound."""
    k = r.varint(f"{what} count")
    if k > n:
        raise DecodeError(f"{what}: {k} indices for {n} entries")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    mode = r.u8(f"{what} index mode")
    if mode == _ALL:
        if k != n:
            raise DecodeError(f"{what}: 'all' index mode with k={k} != n={n}")
        return np.arange(n, dtype=np.int64)
    if mode == _BITMAP:
        bitmap = r.array(np.uint8, -(-n // 8), f"{what} bitmap")
        idx = np.flatnonzero(np.unpackbits(bitmap, count=n, bitorder="little"))
        if idx.size != k:
            raise DecodeError(f"{what}: bitmap has {idx.size} bits set, expected {k}")
        return idx.astype(np.int64)
    if mode == _GAPS:
        nb = r.varint(f"{what} gap bytes")
        gaps = decode_varints(np.frombuffer(r.take(nb, f"{what} gaps"), np.uint8), k)
        idx = np.cumsum(gaps.astype(np.int64) + 1) - 1
        if idx[-1] >= n:
            raise DecodeError(f"{what}: index {int(idx[-1])} out of range for {n} entries")
        return idx
    raise DecodeError(f"{what}: unknown index mode {mode}")


def scatter(shape: tuple[int, ...], idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A zero float32 array of ``shape`` with ``values`` at flat positions ``idx``."""
    out = np.zeros(math.prod(shape), dtype=np.float32)
    out[idx] = values
    return out.reshape(shape)


@register("topk")
@dataclass(frozen=True)
class TopK(Stage):
    """Largest-magnitude sparsifier; ``ratio`` may be a per-tensor list (scope='tensor')."""

    name = "topk"
    kind = "structure"
    shown = ("ratio",)
    ratio: float | tuple[float, ...] = 0.01
    scope: str = "tensor"

    def __post_init__(self) -> None:
        fix(
            self,
            ratio=check_ratio(self.name, "ratio", self.ratio, per=True),
            scope=check_choice(self.name, "scope", self.scope, ("tensor", "global")),
        )
        if self.scope == "global" and isinstance(self.ratio, tuple):
            raise ValueError("topk: a per-tensor ratio list needs scope='tensor'")

    def init(self, like: list[np.ndarray]) -> Any:
        return None

    def select(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Sorted flat indices kept per tensor."""
        if self.scope == "tensor":
            out = []
            for i, x in enumerate(xs):
                k = keep_count(x.size, setting(self.ratio, i, len(xs), "topk ratio"))
                out.append(top_indices(np.abs(x.reshape(-1)), k))
            return out
        sizes = [x.size for x in xs]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        allabs = np.empty(int(offsets[-1]), dtype=np.float32)
        for x, o, n in zip(xs, offsets, sizes, strict=False):
            np.abs(x.reshape(-1), out=allabs[o : o + n])
        ratio = float(self.ratio)  # type: ignore[arg-type]  # a scalar with scope=global
        sel = top_indices(allabs, keep_count(allabs.size, ratio))
        cuts = np.searchsorted(sel, offsets)
        return [sel[cuts[i] : cuts[i + 1]] - offsets[i] for i in range(len(xs))]

    def encode(
        self, state: Any, xs: list[np.ndarray], rng: np.random.Generator | None
    ) -> tuple[Any, bytes, list[np.ndarray], list[int]]:
        idxs = self.select(xs)
        side = b"".join(encode_indices(idx, x.size) for idx, x in zip(idxs, xs, strict=True))
        groups = [x.reshape(-1)[idx] for idx, x in zip(idxs, xs, strict=True)]
        return state, side, groups, list(range(len(xs)))

    def decode(
        self, r: Reader, shapes: list[tuple[int, ...]]
    ) -> tuple[list[int], list[int], Any]:
        if isinstance(self.ratio, tuple):
            setting(self.ratio, 0, len(shapes), "topk ratio")  # validates the length
        idxs = [decode_indices(r, math.prod(s), f"topk tensor {i}") for i, s in enumerate(shapes)]

        def rebuild(groups: list[np.ndarray]) -> list[np.ndarray]:
            return [scatter(s, i, g) for s, i, g in zip(shapes, idxs, groups, strict=True)]

        return [i.size for i in idxs], list(range(len(shapes))), rebuild
