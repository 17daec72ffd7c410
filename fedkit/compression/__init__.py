"""Codecs for update exchange: real bytes, exact accounting.

Build codecs from spec strings, e.g. ``make("ef:topk(ratio=0.01)|quant(bits=8)|zstd")``; the
grammar and how stages compose are documented in :mod:`fedkit.compression.base`.
"""

from fedkit.compression import (  # noqa: F401  (importing a module registers its codecs)
    adaptive,
    cast,
    identity,
    kmeans,
    powersgd,
    qsgd,
    quant,
    randk,
    sign,
    topk,
    zstd,
)
from fedkit.compression.base import REGISTRY, Codec, parse_spec, register
from fedkit.compression.ef import ErrorFeedback, with_error_feedback
from fedkit.compression.spec import decode, family, make, spec_string

__all__ = [
    "REGISTRY",
    "Codec",
    "ErrorFeedback",
    "decode",
    "family",
    "make",
    "parse_spec",
    "register",
    "spec_string",
    "with_error_feedback",
]
