"""The codec protocol and registry.

A codec turns a list of arrays into :class:`~fedkit.types.Encoded` bytes and back. ``encode``
may keep client-side state (error-feedback residuals, warm starts); ``decode`` never needs it,
so a server can decode any client's payload from the bytes alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from fedkit.types import DecodeError, Encoded, Params


class Codec(Protocol):
    @property
    def spec(self) -> str:
        """Canonical spec string; ``make(spec)`` rebuilds an equivalent codec."""
        ...

    def init(self, like: Params) -> Any: ...

    def encode(self, state: Any, x: Params, rng: np.random.Generator) -> tuple[Any, Encoded]: ...

    def decode(self, enc: Encoded) -> Params: ...


CodecFactory = Callable[..., Codec]
REGISTRY: dict[str, CodecFactory] = {}


def register(name: str) -> Callable[[CodecFactory], CodecFactory]:
    def deco(factory: CodecFactory) -> CodecFactory:
        if name in REGISTRY:
            raise ValueError(f"codec {name!r} registered twice")
        REGISTRY[name] = factory
        return factory

    return deco


def make(spec: str) -> Codec:
    """Build a codec from its spec string, e.g. ``"identity"``."""
    name = spec.strip()
    if name not in REGISTRY:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]()


def decode(enc: Encoded) -> Params:
    """Decode any payload from its bytes alone."""
    try:
        codec = make(enc.codec)
    except ValueError as e:
        raise DecodeError(str(e)) from None
    return codec.decode(enc)
