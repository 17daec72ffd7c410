"""Every random draw is keyed by (seed, *parts), so runs reproduce and resume exactly.

Parts are ints or strings (round numbers, client names, purposes); strings are hashed with
sha256 so the key is stable across processes and Python versions (no ``hash()`` salt).
"""

from __future__ import annotations

import hashlib

import numpy as np


def _word(part: int | str) -> int:
    if isinstance(part, (int, np.integer)):
        return int(part) & 0xFFFFFFFFFFFFFFFF
    digest = hashlib.sha256(str(part).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def key(seed: int, *parts: int | str) -> np.random.SeedSequence:
    return np.random.SeedSequence([_word(seed), *(_word(p) for p in parts)])


def rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A numpy Generator for exactly this (seed, parts) key."""
    return np.random.default_rng(key(seed, *parts))


def seed_int(seed: int, *parts: int | str) -> int:
    """A 63-bit integer seed (for torch.Generator) derived from the same key."""
    return int(key(seed, *parts).generate_state(1, np.uint64)[0] >> np.uint64(1))
