"""The codec protocol, the registry, and the parser of the spec language that composes codecs
into pipelines. Building a codec from a spec (``make``, ``decode``) lives in
:mod:`fedkit.compression.spec`, above every codec module, so this module knows no subclass.

A codec turns a list of arrays into :class:`~fedkit.types.Encoded` bytes and back. ``encode``
may keep client-side state (error-feedback residuals, PowerSGD warm starts); ``decode`` never
needs it, so a server decodes any client's payload from the bytes alone: ``Encoded.codec``
holds the canonical spec string and ``decode(enc)`` rebuilds the pipeline from the registry.

Spec grammar (parsed by a small tokenizer, never ``eval``)::

    spec    := ["ef" ":"] stage ("|" stage)*
    stage   := NAME ["(" [arg ("," arg)*] ")"]
    arg     := NAME "=" value
    value   := literal | "[" literal ("," literal)* "]"     # a list = one setting per tensor
    literal := INT | FLOAT | True | False | 'str' | "str" | bare_word

Example: ``"ef:topk(ratio=0.01)|quant(bits=8)|zstd(level=3)"``. The canonical form
(``make(s).spec``) has no spaces, always writes each stage's main parameter (ratio, bits, rank,
levels, clusters, level) and writes the others only when they differ from their defaults.

How stages compose. A pipeline has up to three stages, in this order, each at most once:

1. a *structure* stage decides **which numbers** are sent: ``topk`` / ``randk`` (sparsifiers:
   index side-info, or just a seed, plus the kept values) or ``powersgd`` (low rank: the P and Q
   factors). Without one, every float tensor is sent densely.
2. a *values* stage decides **how each number is written**: ``fp16``, ``bf16``, ``quant``,
   ``qsgd``, ``sign``, ``kmeans``. It sees the structure stage's output as *value groups*
   (1-D float32 arrays: the kept values of a tensor, a P or Q factor, or a whole tensor) and
   keeps one scale / norm / codebook per group. Without one, values travel as float32.
3. a *bytes* stage, ``zstd``, losslessly compresses the final bytes; it must come last.

So ``topk(ratio=0.01)|quant(bits=8)`` sends top-1% positions plus 8-bit codes of their values,
and ``powersgd(rank=4)|fp16`` sends half-precision factors. The main setting of ``topk``,
``randk``, ``powersgd`` and ``quant`` may be a list with one entry per float tensor
(``powersgd(rank=[4,1,8])``): that is how the layer-wise selector of
:mod:`fedkit.compression.select` expresses its choices.

Float tensors (float16/32/64) are compressed as float32 and decoded back to their dtype; other
dtypes (integer buffers, masks) travel raw. ``identity`` alone is the raw codec; in a pipeline it
is a no-op (``identity|zstd`` == ``zstd``, lossless for every dtype).

Error feedback is a wrapper, not a stage: ``with_error_feedback(codec)`` or the ``ef:`` prefix
(see :mod:`fedkit.compression.ef`). Its payloads carry the inner spec, since decoding is the same.

Hostile payloads: every decoder checks sizes against the buffer before allocating and raises
:class:`~fedkit.types.DecodeError`; sparse and low-rank formats can legitimately describe big
tensors with few bytes, so a receiver that knows the model decodes with ``decode(enc,
like=params)``: the payload must then declare exactly that layout, and zstd stops at the largest
valid frame for it (see :mod:`fedkit.compression.limits`). Without ``like``, decode refuses more
than ``MAX_ELEMENTS`` elements in total and zstd output above ``MAX_BYTES``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from fedkit.compression.limits import Like
from fedkit.registry import Registry, did_you_mean
from fedkit.types import Encoded, Params
from fedkit.untrusted import shorten

MAX_ELEMENTS = 1 << 28
"""Decode refuses payloads that claim more elements than this in total (1 GiB of float32)."""
MAX_BYTES = 1 << 31
"""Decode refuses to decompress more than this many bytes (zstd bombs)."""

Value = bool | int | float | str | tuple[Any, ...]
Kind = Literal["structure", "values", "bytes"]
_KIND_ORDER: dict[str, int] = {"structure": 0, "values": 1, "bytes": 2}
_KIND_NAME = {"structure": "sparsifier/low-rank", "values": "value coder", "bytes": "byte"}


class Codec(Protocol):
    @property
    def spec(self) -> str:
        """Canonical spec string; ``make(spec)`` rebuilds an equivalent codec."""
        ...

    def init(self, like: Params) -> Any: ...

    def encode(
        self, state: Any, x: Params, rng: np.random.Generator | None = None
    ) -> tuple[Any, Encoded]: ...

    def decode(self, enc: Encoded, like: Like = None) -> Params:
        """Decode ``enc``; ``like`` (the model, a layout or :class:`Limits`) bounds memory."""
        ...


CodecFactory = Callable[..., Any]
REGISTRY: Registry[CodecFactory] = Registry("codec")
register = REGISTRY.register
"""Register a pipeline stage class (see :class:`Stage`) or a standalone codec factory."""


# --------------------------------------------------------------------------------------------
# stages


class Stage:
    """A pipeline stage: a frozen dataclass whose fields are its spec parameters.

    Subclasses set ``name`` and ``kind`` and implement the methods of their kind (see
    :mod:`fedkit.compression.pipeline`): structure stages ``init/encode/decode``, value stages
    ``encode_values/decode_values``, byte stages ``compress/decompress``.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    shown: ClassVar[tuple[str, ...]] = ()
    """Parameters always written in the canonical spec; the others only when not default."""

    def canonical(self) -> str:
        args = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name in self.shown or v != f.default:
                args.append(f"{f.name}={format_value(v)}")
        return f"{self.name}({','.join(args)})" if args else self.name


def setting(value: Any, i: int, count: int, what: str) -> Any:
    """Entry ``i`` of a per-tensor setting (a scalar applies to every tensor)."""
    if isinstance(value, tuple):
        if len(value) != count:
            raise ValueError(f"{what} has {len(value)} entries but the update has {count} tensors")
        return value[i]
    return value


def _per(name: str, key: str, v: Any, one: Callable[[str, str, Any], Any], per: bool) -> Any:
    if isinstance(v, list | tuple):
        if not per:
            raise ValueError(f"{name}: {key} takes a single value, not a list")
        if not v:
            raise ValueError(f"{name}: {key} list is empty")
        return tuple(one(name, key, e) for e in v)
    return one(name, key, v)


def check_int(name: str, key: str, v: Any, lo: int, hi: int, per: bool = False) -> Any:
    """Validate an int parameter (or per-tensor list) in ``[lo, hi]``."""

    def one(name: str, key: str, e: Any) -> int:
        if isinstance(e, bool) or not isinstance(e, int | np.integer):
            raise ValueError(f"{name}: {key} must be an int, got {e!r}")
        if not lo <= e <= hi:
            raise ValueError(f"{name}: {key} must be in {lo}..{hi}, got {e}")
        return int(e)

    return _per(name, key, v, one, per)


def check_ratio(name: str, key: str, v: Any, per: bool = False) -> Any:
    """Validate a ratio in (0, 1] (or per-tensor list)."""

    def one(name: str, key: str, e: Any) -> float:
        if isinstance(e, bool) or not isinstance(e, int | float | np.number):
            raise ValueError(f"{name}: {key} must be a number, got {e!r}")
        if not 0.0 < float(e) <= 1.0:
            raise ValueError(f"{name}: {key} must be in (0, 1], got {e}")
        return float(e)

    return _per(name, key, v, one, per)


def check_bool(name: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool | np.bool_):
        raise ValueError(f"{name}: {key} must be True or False, got {v!r}")
    return bool(v)


def check_choice(name: str, key: str, v: Any, choices: Sequence[str]) -> str:
    if v not in choices:
        raise ValueError(f"{name}: {key} must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def fix(stage: Any, **values: Any) -> None:
    """Set validated fields on a frozen dataclass from ``__post_init__``."""
    for k, v in values.items():
        object.__setattr__(stage, k, v)


def need_rng(rng: np.random.Generator | None, who: str) -> np.random.Generator:
    if rng is None:
        raise ValueError(f"{who} is stochastic: pass a numpy Generator as rng")
    return rng


# --------------------------------------------------------------------------------------------
# spec parsing

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
     |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
     |(?P<str>'[^']*'|"[^"]*")
     |(?P<punct>[()\[\],=|:])
    )""",
    re.VERBOSE,
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BOOLS = {"True": True, "true": True, "False": False, "false": False}


@dataclasses.dataclass(frozen=True)
class ParsedSpec:
    """A parsed spec: the error-feedback flag and ``(name, params)`` per stage."""

    error_feedback: bool
    stages: tuple[tuple[str, dict[str, Any]], ...]


def _tokens(spec: str) -> list[tuple[str, Any, int]]:
    out, pos = [], 0
    spec = spec.rstrip()
    while pos < len(spec):
        m = _TOKEN.match(spec, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"bad codec spec {shorten(spec)}: unexpected character at column {pos}")
        kind = m.lastgroup or ""
        text = m.group(kind)
        col = m.start(kind)
        if kind == "num":
            val: Any = float(text) if any(c in text for c in ".eE") else int(text)
        elif kind == "str":
            val = text[1:-1]
        else:
            val = text
        out.append((kind, val, col))
        pos = m.end()
    return out


def parse_spec(spec: str) -> ParsedSpec:
    """Parse a spec string into stages; raises ``ValueError`` naming the bad column."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"codec spec must be a non-empty string, got {shorten(spec)}")
    toks = _tokens(spec)
    i = 0

    def err(msg: str) -> ValueError:
        col = toks[i][2] if i < len(toks) else len(spec)
        return ValueError(f"bad codec spec {shorten(spec)}: {msg} at column {col}")

    def peek(kind: str, val: Any = None) -> bool:
        return i < len(toks) and toks[i][0] == kind and (val is None or toks[i][1] == val)

    def expect(kind: str, val: Any = None) -> Any:
        nonlocal i
        if not peek(kind, val):
            raise err(f"expected {val or kind!r}")
        i += 1
        return toks[i - 1][1]

    def literal() -> Any:
        nonlocal i
        if i >= len(toks) or toks[i][0] not in ("num", "str", "name"):
            raise err("expected a value")
        kind, val, _ = toks[i]
        i += 1
        if kind == "name" and val in _BOOLS:
            return _BOOLS[val]
        return val

    error_feedback = False
    if len(toks) >= 2 and toks[0][:2] == ("name", "ef") and toks[1][:2] == ("punct", ":"):
        error_feedback, i = True, 2
    stages: list[tuple[str, dict[str, Any]]] = []
    while True:
        name = expect("name")
        params: dict[str, Any] = {}
        if peek("punct", "("):
            i += 1
            while not peek("punct", ")"):
                key = expect("name")
                if key in params:
                    raise err(f"parameter {shorten(key)} given twice")
                expect("punct", "=")
                if peek("punct", "["):
                    i += 1
                    items = [literal()]
                    while peek("punct", ","):
                        i += 1
                        items.append(literal())
                    expect("punct", "]")
                    params[key] = tuple(items)
                else:
                    params[key] = literal()
                if not peek("punct", ","):
                    break
                i += 1
            expect("punct", ")")
        stages.append((name, params))
        if i == len(toks):
            break
        if peek("punct", ":") and name == "ef":
            raise err("'ef:' is only allowed once, at the start")
        expect("punct", "|")
    return ParsedSpec(error_feedback, tuple(stages))


def format_value(v: Any) -> str:
    """Canonical text of a parameter value (inverse of the parser's literals)."""
    if isinstance(v, bool | np.bool_):
        return "True" if v else "False"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return repr(float(v))
    if isinstance(v, str):
        if _IDENT.match(v) and v not in _BOOLS:
            return v
        if "'" in v:
            return '"' + v + '"'
        return "'" + v + "'"
    if isinstance(v, tuple | list):
        return "[" + ",".join(format_value(e) for e in v) + "]"
    raise TypeError(f"cannot format {v!r} in a codec spec")


def build_stage(name: str, params: Mapping[str, Any]) -> Any:
    """Instantiate one registered stage, with helpful errors for unknown names/parameters."""
    factory = REGISTRY[name]
    if dataclasses.is_dataclass(factory):
        known = [f.name for f in dataclasses.fields(factory)]
        for key in params:
            if key not in known:
                raise ValueError(
                    f"codec {name!r} has no parameter {shorten(key)}{did_you_mean(key, known)}; "
                    f"parameters: {', '.join(known) or 'none'}"
                )
    return factory(**params)
