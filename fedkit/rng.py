"""Every random draw is keyed by (seed, *parts), so runs reproduce and resume exactly.

Parts are ints or strings (round numbers, client names, purposes); strings are hashed with
sha256 so the key is stable across processes and Python versions (no ``hash()`` salt).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np


@functools.lru_cache(maxsize=65536)  # client names and purposes recur in every key
def _text(part: str) -> int:
    return int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")


def _word(part: int | str) -> int:
    if isinstance(part, (int, np.integer)):
        return int(part) & 0xFFFFFFFFFFFFFFFF
    return _text(str(part))


def _limbs(words: list[int]) -> np.ndarray:
    """The uint32 entropy numpy itself makes of these 64-bit words (each: its little-endian 32-bit
    limbs, 0 as one limb), handed over ready: the same SeedSequence, without numpy's per-int
    coercion, which costs more than the rest of a key (split learning keys every batch)."""
    out: list[int] = []
    for w in words:
        out.append(w & 0xFFFFFFFF)
        if w >> 32:
            out.append(w >> 32)
    return np.array(out, dtype=np.uint32)


def key(seed: int, *parts: int | str) -> np.random.SeedSequence:
    return np.random.SeedSequence(_limbs([_word(seed), *(_word(p) for p in parts)]))


def rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A numpy Generator for exactly this (seed, parts) key."""
    return np.random.default_rng(key(seed, *parts))


def seed_int(seed: int, *parts: int | str) -> int:
    """A 63-bit integer seed (for torch.Generator) derived from the same key."""
    return int(key(seed, *parts).generate_state(1, np.uint64)[0] >> np.uint64(1))


class _Lazy:
    """A Generator made on first use (see :func:`lazy`)."""

    __slots__ = ("_gen", "_parts", "_seed")

    def __init__(self, seed: int, parts: tuple[int | str, ...]) -> None:
        self._seed, self._parts = seed, parts
        self._gen: np.random.Generator | None = None

    def __getattr__(self, name: str) -> object:
        if self._gen is None:
            self._gen = rng(self._seed, *self._parts)
        return getattr(self._gen, name)


def lazy(seed: int, *parts: int | str) -> np.random.Generator:
    """:func:`rng` for a consumer that may never draw (a deterministic codec): the same stream,
    made only when first used, since making one costs tens of microseconds per task."""
    return _Lazy(seed, parts)  # type: ignore[return-value]
