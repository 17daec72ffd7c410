"""Error feedback: ``with_error_feedback(codec)``, or the ``ef:`` spec prefix.

Why it exists: biased compressors (top-k, sign, PowerSGD, k-means, deterministic rounding)
drop the same small components round after round, so the model never sees them and training
can stall or diverge. Error feedback keeps what was dropped in a client-side residual e and
adds it back before the next compression:

    transmit  C(x + e),   then   e <- x + e - decode(C(x + e))

so everything is eventually sent (sum of sent updates + final residual = sum of inputs) and
biased compressors converge like uncompressed SGD. The residual lives in the encoder state
(one float32 array per float tensor); decode is unchanged and the server needs no state, so
payloads carry the *inner* spec. Usage::

    codec = make("ef:topk(ratio=0.01)|quant(bits=8)")   # or with_error_feedback(make(...))
    state = codec.init(params)
    state, enc = codec.encode(state, delta, rng)        # server: decode(enc)

References: Seide et al., "1-bit SGD", Interspeech 2014; Stich et al., "Sparsified SGD with
Memory", NeurIPS 2018; Karimireddy et al., "Error Feedback Fixes SignSGD", ICML 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.compression.base import Codec
from fedkit.compression.frame import dtype_code
from fedkit.compression.limits import Like
from fedkit.compression.pipeline import FLOAT_CODES
from fedkit.types import Encoded, Params


@dataclass(frozen=True)
class ErrorFeedback:
    """Wraps any codec with a residual memory; state is ``(residuals, inner_state)``."""

    inner: Codec

    @property
    def spec(self) -> str:
        return "ef:" + self.inner.spec

    def init(self, like: Params) -> Any:
        res = tuple(
            np.zeros(a.shape, np.float32) if dtype_code(a.dtype) in FLOAT_CODES else None
            for a in like
        )
        return res, self.inner.init(like)

    def encode(
        self, state: Any, x: Params, rng: np.random.Generator | None = None
    ) -> tuple[Any, Encoded]:
        if state is None:
            state = self.init(x)
        res, inner_state = state
        if len(res) != len(x):
            raise ValueError(f"error-feedback state has {len(res)} arrays, update has {len(x)}")
        pairs = list(zip(x, res, strict=True))
        y = [a if e is None else np.asarray(a, np.float32) + e for a, e in pairs]
        # keep each array's dtype on the wire (float64 stays float64 after decode)
        y_in = [yi.astype(a.dtype, copy=False) for yi, (a, _) in zip(y, pairs, strict=True)]
        inner_state, enc = self.inner.encode(inner_state, y_in, rng)
        sent = self.inner.decode(enc)
        new = tuple(
            None if e is None else yi - np.asarray(s, np.float32)
            for yi, s, e in zip(y, sent, res, strict=True)
        )
        return (new, inner_state), enc

    def decode(self, enc: Encoded, like: Like = None) -> Params:
        return self.inner.decode(enc, like)


def with_error_feedback(codec: Codec) -> ErrorFeedback:
    """Wrap ``codec`` with error feedback (spec ``"ef:" + codec.spec``)."""
    if isinstance(codec, ErrorFeedback):
        raise ValueError("codec already has error feedback")
    return ErrorFeedback(codec)
