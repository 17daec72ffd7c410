"""Identity codec: raw float tensors. The oracle every lossy codec is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.compression.base import register
from fedkit.compression.frame import pack_arrays, unpack_arrays
from fedkit.compression.limits import Like, resolve
from fedkit.types import DecodeError, Encoded, Params
from fedkit.untrusted import shorten


@register("identity")
@dataclass(frozen=True)
class Identity:
    """Sends arrays unchanged. Use it when bandwidth is not the bottleneck, or as a baseline."""

    @property
    def spec(self) -> str:
        return "identity"

    def init(self, like: Params) -> Any:
        return None

    def encode(
        self, state: Any, x: Params, rng: np.random.Generator | None = None
    ) -> tuple[Any, Encoded]:
        return state, Encoded(self.spec, pack_arrays(x))

    def decode(self, enc: Encoded, like: Like = None) -> Params:
        if enc.codec != self.spec:
            raise DecodeError(f"identity codec cannot decode a {shorten(enc.codec)} payload")
        return unpack_arrays(enc.data, copy=True, limits=resolve(like))
