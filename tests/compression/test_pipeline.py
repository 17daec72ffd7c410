"""Properties every codec shares: shapes and dtypes survive, determinism, hostile input."""

import struct

import numpy as np
import pytest

from fedkit.compression import base, decode, make
from fedkit.compression.bits import varint
from fedkit.types import DecodeError, Encoded

SPECS = [
    "identity", "zstd", "fp16", "bf16", "quant(bits=3)", "quant(bits=8,stochastic=True)",
    "qsgd(levels=4)", "sign", "kmeans(clusters=5)", "topk(ratio=0.1)",
    "topk(ratio=0.2,scope=global)|quant(bits=4)|zstd", "randk(ratio=0.1,scale=True)|fp16",
    "powersgd(rank=2)", "powersgd(rank=[1,0,3,1])|bf16|zstd(level=1)", "ef:topk(ratio=0.1)|sign",
]


def _mixed(model):
    return [*model, np.arange(4, dtype=np.int32), np.zeros((0, 3), np.float32),
            np.ones((2, 2), np.float64)]


@pytest.mark.parametrize("spec", SPECS)
def test_shapes_dtypes_and_writable_outputs(spec, roundtrip, model) -> None:
    x = _mixed(model) if "[" not in spec else model
    y, enc = roundtrip(spec, x)
    assert enc.codec == make(spec).spec.removeprefix("ef:")
    for a, b in zip(x, y, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert b.flags.writeable
    if "[" not in spec:
        np.testing.assert_array_equal(y[4], x[4])  # integer arrays travel raw


@pytest.mark.parametrize("spec", SPECS)
def test_same_rng_same_bytes(spec, roundtrip, model) -> None:
    (_, a), (_, b) = roundtrip(spec, model, seed=7), roundtrip(spec, model, seed=7)
    assert a == b


@pytest.mark.parametrize("spec", SPECS)
def test_truncated_payloads_raise_decode_error(spec, roundtrip, model) -> None:
    _, enc = roundtrip(spec, model)
    cuts = sorted({0, 1, 2, 5, len(enc.data) // 2, len(enc.data) - 1})
    for cut in cuts:
        with pytest.raises(DecodeError):
            decode(Encoded(enc.codec, enc.data[:cut]))
    if "zstd" not in spec:
        with pytest.raises(DecodeError):
            decode(Encoded(enc.codec, enc.data + b"\0"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # garbage may decode to inf/nan
@pytest.mark.parametrize("spec", SPECS)
def test_corrupted_payloads_never_crash(spec, roundtrip, model) -> None:
    _, enc = roundtrip(spec, model)
    rng = np.random.default_rng(0)
    for _ in range(40):
        data = bytearray(enc.data)
        for pos in rng.integers(0, len(data), 3):
            data[pos] = int(rng.integers(0, 256))
        try:
            y = decode(Encoded(enc.codec, bytes(data)))
        except DecodeError:
            continue
        assert len(y) == len(model)


def test_oversized_claims_are_rejected_before_allocating() -> None:
    huge = varint(1 << 40)
    for spec in ["sign", "randk(ratio=0.001)", "powersgd(rank=1)", "topk(ratio=0.5)"]:
        data = bytes([1]) + varint(1) + bytes([0, 2]) + huge + huge + b"\0" * 16
        with pytest.raises(DecodeError, match="over the limit of"):
            decode(Encoded(make(spec).spec, data))
    many = bytes([1]) + varint(1 << 50)
    with pytest.raises(DecodeError, match="arrays"):
        decode(Encoded("sign", many))
    # a top-k claiming a million varint gaps in a few bytes
    data = bytes([1, 1, 0, 1]) + varint(10) + varint(5) + bytes([1]) + varint(10**9)
    with pytest.raises(DecodeError):
        decode(Encoded("topk(ratio=0.5)", data))
    # identity frame with absurd dims
    frame = struct.pack("<IBB2Q", 1, 0, 2, 1 << 40, 1 << 40)
    with pytest.raises(DecodeError):
        decode(Encoded("identity", frame))
    assert base.MAX_ELEMENTS < 1 << 40


def test_per_tensor_list_length_must_match(model) -> None:
    codec = make("powersgd(rank=[1,2])")
    with pytest.raises(ValueError, match="2 entries but the update has 4"):
        codec.encode(codec.init(model), model, np.random.default_rng(0))
    _, enc = make("powersgd(rank=[1,2,3,4])").encode(None, model, np.random.default_rng(0))
    with pytest.raises(DecodeError):
        make("powersgd(rank=[1,2,3,4])").decode(Encoded(enc.codec, enc.data[:40]))


def test_stochastic_codecs_need_an_rng(model) -> None:
    for spec in ["quant(bits=2,stochastic=True)", "qsgd", "randk(ratio=0.5)"]:
        with pytest.raises(ValueError, match="rng"):
            make(spec).encode(None, model, None)
    make("quant(bits=2)").encode(None, model, None)  # deterministic ones do not
