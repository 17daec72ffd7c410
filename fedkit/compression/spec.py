"""Spec string -> codec: the one place that composes registered stages into a codec.

It sits above every codec module (the stages, ``pipeline``, ``ef``), so :mod:`.base` keeps only
the protocol, the registry and the parser and knows none of its subclasses. Codecs that build
other codecs from specs at run time (``adaptive``) import this module; the grammar is
documented in :mod:`fedkit.compression.base`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from fedkit.compression.base import Codec, Stage, build_stage, format_value, parse_spec
from fedkit.compression.ef import with_error_feedback
from fedkit.compression.identity import Identity
from fedkit.compression.limits import Like, resolve
from fedkit.compression.pipeline import build_pipeline
from fedkit.types import DecodeError, Encoded, Params

__all__ = ["decode", "family", "make", "spec_string"]


def make(spec: str) -> Codec:
    """Build a codec from its spec string.

    >>> make("topk(ratio=0.010) | quant(bits=8, stochastic=false) | zstd").spec
    'topk(ratio=0.01)|quant(bits=8)|zstd(level=3)'
    """
    parsed = parse_spec(spec)
    stages = [build_stage(n, p) for n, p in parsed.stages]
    for (name, _), st in zip(parsed.stages, stages, strict=True):
        if len(stages) > 1 and not isinstance(st, Stage | Identity):  # a standalone codec
            raise ValueError(f"{name}(...) must be the only stage{getattr(st, 'alone_hint', '')}")
    codec = build_pipeline(stages)
    return with_error_feedback(codec) if parsed.error_feedback else codec


def spec_string(
    stages: Sequence[tuple[str, Mapping[str, Any]] | str], error_feedback: bool = False
) -> str:
    """Build a canonical spec from ``(name, params)`` pairs (e.g. from a YAML dict).

    >>> spec_string([("topk", {"ratio": 0.01}), ("quant", {"bits": 4})], error_feedback=True)
    'ef:topk(ratio=0.01)|quant(bits=4)'
    """
    parts = []
    for st in stages:
        name, params = (st, {}) if isinstance(st, str) else st
        args = ",".join(f"{k}={format_value(v)}" for k, v in params.items())
        parts.append(f"{name}({args})" if args else name)
    return make(("ef:" if error_feedback else "") + "|".join(parts)).spec


def family(spec: str) -> tuple[str, ...]:
    """The codec family of a spec: its stage names, without error feedback (payloads carry the
    inner spec), without no-op ``identity`` stages, and with ``adaptive(...)`` replaced by the
    stages its payloads name. A payload's ``Encoded.codec`` has the family of the spec that
    produced it, whatever the per-layer settings; a ValueError names a bad spec.

    >>> family("ef:topk(ratio=0.01)|quant(bits=8)|zstd"), family("topk(ratio=[0.1,0.5])|quant(bits=4)|zstd")
    (('topk', 'quant', 'zstd'), ('topk', 'quant', 'zstd'))
    >>> family("ef:adaptive(family=powersgd,candidates=[1,2],uniform=1,then='fp16')")
    ('powersgd', 'fp16')
    """
    parsed = parse_spec(spec)
    out: list[str] = []
    for name, params in parsed.stages:
        if name == "adaptive":
            out.append(str(params.get("family", "powersgd")))
            if params.get("then"):
                out += family(str(params["then"]))
        elif name != "identity":
            out.append(name)
    return tuple(out) or ("identity",)


@functools.lru_cache(maxsize=256)
def _cached(spec: str) -> Codec:
    return make(spec)


def decode(enc: Encoded, like: Like = None) -> Params:
    """Decode any payload from its bytes alone.

    ``like`` bounds what decoding may allocate, whatever the payload declares: the model's
    arrays (or ``(shape, dtype)`` pairs) make a payload of any other layout a
    :class:`DecodeError` before anything is allocated; a ``Limits(max_elements, max_bytes)``
    caps the totals. Servers must pass it for every untrusted payload.
    """
    try:
        limits = resolve(like)
    except ValueError as e:
        raise ValueError(f"decode: {e}") from None
    try:
        codec = _cached(enc.codec)
    except (ValueError, TypeError, RecursionError) as e:
        raise DecodeError(f"cannot build codec for payload: {e}") from None
    return codec.decode(enc, limits)
