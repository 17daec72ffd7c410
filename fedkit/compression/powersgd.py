"""PowerSGD low-rank compression: ``powersgd(rank=2)``; one power iteration per round.

Each tensor with ndim >= 2 is viewed as a matrix M (out x rest; conv kernels become
(out, in*kh*kw)) and sent as P (n x r, orthonormal) and Q (m x r) with M ~ P Q^T:
P = orth(M Q_prev), Q = M^T P. Q is warm-started from the previous round (kept in the encoder
state), so the single power iteration per round tracks the top singular subspace over time.
Tensors where r*(n+m) >= n*m (biases, small layers) are sent dense; ``rank=0`` sends nothing
for that tensor. Biased: use error feedback (``ef:powersgd(rank=r)``). Use it for large dense
and conv layers, whose updates are close to low rank: cost is r*(n+m) instead of n*m values
and encode/decode are two thin matrix products. ``rank`` may be a per-tensor list, as chosen by
:func:`fedkit.compression.select.plan`. Reference: Vogels, Karimireddy, Jaggi, "PowerSGD:
Practical Low-Rank Gradient Compression for Distributed Optimization", NeurIPS 2019.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedkit.compression.base import Stage, check_int, fix, register, setting
from fedkit.compression.bits import Reader

Mode = Literal["zero", "raw", "lowrank"]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (out, rest) matrix view PowerSGD uses for a tensor of ``shape``."""
    n = shape[0] if shape else 1
    return n, (math.prod(shape) // n if n else 0)


def mode(shape: tuple[int, ...], rank: int) -> Mode:
    """How a tensor travels at ``rank``: nothing, dense, or as low-rank factors."""
    if rank == 0:
        return "zero"
    n, m = matrix_shape(shape)
    if len(shape) < 2 or rank * (n + m) >= n * m:
        return "raw"
    return "lowrank"


def initial_q(tensor: int, m: int, rank: int) -> np.ndarray:
    """Deterministic random start for Q (like torch's PowerSGD ``random_seed=0``)."""
    return np.random.default_rng([0, tensor]).standard_normal((m, rank), dtype=np.float32)


@register("powersgd")
@dataclass(frozen=True)
class PowerSGD(Stage):
    """Rank-r power-iteration compression with warm start; state is a tuple of Q per tensor."""

    name = "powersgd"
    kind = "structure"
    shown = ("rank",)
    rank: int | tuple[int, ...] = 2

    def __post_init__(self) -> None:
        fix(self, rank=check_int(self.name, "rank", self.rank, 0, 1 << 16, per=True))

    def _rank(self, i: int, count: int) -> int:
        return int(setting(self.rank, i, count, "powersgd rank"))

    def init(self, like: list[np.ndarray]) -> Any:
        return tuple(None for _ in like)

    def encode(
        self, state: Any, xs: list[np.ndarray], rng: np.random.Generator | None
    ) -> tuple[Any, bytes, list[np.ndarray], list[int]]:
        qs = list(state) if state is not None and len(state) == len(xs) else [None] * len(xs)
        groups: list[np.ndarray] = []
        owners: list[int] = []
        for i, x in enumerate(xs):
            r = self._rank(i, len(xs))
            how = mode(x.shape, r)
            if how == "raw":
                groups.append(x.reshape(-1))
                owners.append(i)
            elif how == "lowrank":
                n, m = matrix_shape(x.shape)
                mat = x.reshape(n, m)
                q = qs[i]
                if q is None or q.shape != (m, r) or not q.any():
                    q = initial_q(i, m, r)
                p = np.linalg.qr(mat @ q)[0].astype(np.float32, copy=False)
                q = (mat.T @ p).astype(np.float32, copy=False)
                groups += [p.reshape(-1), q.reshape(-1)]
                owners += [i, i]
                qs[i] = q
        return tuple(qs), b"", groups, owners

    def decode(
        self, r: Reader, shapes: list[tuple[int, ...]]
    ) -> tuple[list[int], list[int], Any]:
        sizes: list[int] = []
        owners: list[int] = []
        modes = []
        for i, s in enumerate(shapes):
            rk = self._rank(i, len(shapes))
            how = mode(s, rk)
            modes.append((how, rk))
            n, m = matrix_shape(s)
            if how == "raw":
                sizes.append(math.prod(s))
                owners.append(i)
            elif how == "lowrank":
                sizes += [n * rk, m * rk]
                owners += [i, i]

        def rebuild(groups: list[np.ndarray]) -> list[np.ndarray]:
            out, it = [], iter(groups)
            for s, (how, rk) in zip(shapes, modes, strict=True):
                if how == "zero":
                    out.append(np.zeros(s, dtype=np.float32))
                elif how == "raw":
                    out.append(next(it).reshape(s))
                else:
                    n, m = matrix_shape(s)
                    p, q = next(it).reshape(n, rk), next(it).reshape(m, rk)
                    out.append((p @ q.T).reshape(s))
            return out

        return sizes, owners, rebuild
