"""Shared helpers for codec tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedkit.compression import decode, make
from fedkit.types import Encoded, Params

RoundTrip = Callable[..., tuple[Params, Encoded]]


def _roundtrip(spec: str, x: Params, seed: int = 0) -> tuple[Params, Encoded]:
    codec = make(spec)
    _, enc = codec.encode(codec.init(x), x, np.random.default_rng(seed))
    wire = Encoded.from_bytes(enc.to_bytes())
    return decode(wire), enc


@pytest.fixture
def roundtrip() -> RoundTrip:
    """``roundtrip(spec, arrays, seed=0) -> (decoded, encoded)`` through real wire bytes."""
    return _roundtrip


@pytest.fixture
def model() -> Params:
    """A small model-shaped update: conv kernel, bias, dense matrix, scalar."""
    rng = np.random.default_rng(1)
    return [
        rng.standard_normal((16, 3, 3, 3)).astype(np.float32),
        rng.standard_normal(16).astype(np.float32),
        rng.standard_normal((64, 48)).astype(np.float32),
        np.array(0.5, dtype=np.float32),
    ]
