"""Decoding bounded by the model: bombs cost the budget, never what the payload declares."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard

from fedkit.compression import decode, make
from fedkit.compression.bits import varint
from fedkit.compression.limits import Limits, frame_bytes, layout_of, resolve
from fedkit.types import DecodeError, Encoded

SPECS = [
    "identity", "zstd(level=19)", "fp16", "bf16", "quant(bits=3)", "qsgd(levels=7)", "sign",
    "kmeans(clusters=256)", "topk(ratio=0.3)|quant(bits=8)|zstd", "topk(ratio=1.0)",
    "topk(ratio=0.05,scope=global)", "randk(ratio=0.2,scale=True)", "powersgd(rank=2)|fp16",
    "ef:powersgd(rank=[1,0,3,1])|zstd", "ef:sign|zstd",
    "adaptive(family=topk,candidates=[0.1,0.5],uniform=0.1)",
]
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _hwm_kb() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _refused_cheaply(enc: Encoded, like: object, match: str) -> tuple[int, float, int | None]:
    """Decode must raise; return (traced peak bytes, seconds, RSS high-water growth in KiB)."""
    rss0 = None
    try:
        _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
        rss0 = _hwm_kb()
    except OSError:
        pass
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match=match):
            decode(enc, like=like)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dt = time.perf_counter() - t0
    rss1 = _hwm_kb() if rss0 is not None else None
    return peak, dt, (rss1 - rss0) if rss0 is not None and rss1 is not None else None


def _zero_bomb(size: int, content_size: bool) -> bytes:
    """A zstd frame of ``size`` zero bytes, built in 1 MiB steps (never held in memory)."""
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=content_size).compressobj(
        size=size if content_size else -1
    )
    chunk = bytes(1 << 20)
    return b"".join(cobj.compress(chunk) for _ in range(size >> 20)) + cobj.flush()


@pytest.mark.parametrize("content_size", [True, False], ids=["names-512MiB", "streamed-512MiB"])
def test_zstd_bomb_is_refused_quickly_with_memory_bounded_by_the_model(model, content_size) -> None:
    bomb = _zero_bomb(512 << 20, content_size)
    assert len(bomb) < 20_000  # ~16 KB on the wire
    budget = frame_bytes(layout_of(model))
    for spec in ("zstd(level=3)", "sign|zstd(level=3)", "ef:topk(ratio=0.1)|zstd(level=3)"):
        codec = spec.removeprefix("ef:")
        peak, dt, rss = _refused_cheaply(Encoded(codec, bomb), model, "limit of")
        assert peak < budget + (256 << 10), (spec, peak, budget)
        assert dt < 2.0, (spec, dt)
        if rss is not None:  # C-side buffers too (zstd window): nowhere near 512 MiB
            assert rss < 32 << 10, (spec, rss)


def test_every_codec_decodes_a_valid_payload_under_the_models_bound(model) -> None:
    layout = [(a.shape, a.dtype) for a in model]
    for spec in SPECS:
        codec = make(spec)
        _, enc = codec.encode(codec.init(model), model, np.random.default_rng(0))
        free = decode(enc)
        for like in (model, layout, resolve(model)):
            bounded = decode(enc, like=like)
            for a, b in zip(free, bounded, strict=True):
                np.testing.assert_array_equal(a, b)
                assert a.dtype == b.dtype


def test_frame_bytes_bounds_every_uncompressed_frame() -> None:
    rng = np.random.default_rng(0)
    models = [
        [np.array(1.5, np.float32)],
        [rng.standard_normal((3, 1)).astype(np.float64), np.arange(5, dtype=np.int64)],
        [rng.standard_normal((40, 30)).astype(np.float32), np.ones(7, np.float16)],
    ]
    for x in models:
        bound = frame_bytes(layout_of(x))
        for spec in SPECS:
            spec = spec.replace("rank=[1,0,3,1]", "rank=1")  # per-tensor lists fit 4 tensors
            inner = spec.replace("|zstd(level=19)", "").replace("|zstd", "")
            inner = "identity" if inner == "zstd(level=19)" else inner
            codec = make(inner)
            _, enc = codec.encode(codec.init(x), x, np.random.default_rng(1))
            assert len(enc.data) <= bound, (inner, len(enc.data), bound)


def test_every_decoder_refuses_a_layout_other_than_the_models(model) -> None:
    bigger = [np.ones((300, 300), np.float32), *model[1:]]
    for spec in SPECS:
        codec = make(spec)
        _, enc = codec.encode(codec.init(bigger), bigger, np.random.default_rng(0))
        with pytest.raises(DecodeError, match="tensor 0 declared as \\(300, 300\\)|claims .* over the limit"):
            decode(enc, like=model)
        if "rank=[" in spec:
            continue  # a per-tensor list names 4 tensors
        _, enc = codec.encode(codec.init(model[:3]), model[:3], np.random.default_rng(0))
        with pytest.raises(DecodeError, match="declares 3 tensors, the model has 4"):
            decode(enc, like=model)
    as64 = [a.astype(np.float64) for a in model]
    _, enc = make("sign").encode(None, as64)
    with pytest.raises(DecodeError, match="float64, the model has .* float32"):
        decode(enc, like=model)


def test_a_tiny_payload_claiming_a_huge_dense_topk_allocates_nothing(model) -> None:
    # one float32 tensor of 2**27 entries, top-k index mode 'all' (k = n), no values: without a
    # bound the decoder would build 2**27 indices (1 GiB) before noticing the values are missing
    n = 1 << 27
    data = bytes([1]) + varint(1) + bytes([0, 1]) + varint(n) + varint(n) + bytes([2])
    peak, _, _ = _refused_cheaply(Encoded("topk(ratio=1.0)", data), model, "declares 1 tensors")
    assert peak < 64 << 10
    peak, _, _ = _refused_cheaply(Encoded("topk(ratio=1.0)", data), Limits(10_000, 1 << 20), "over the limit of 10000")
    assert peak < 64 << 10


def test_limits_without_a_layout_cap_elements_and_bytes() -> None:
    x = [np.zeros(5000, np.float32)]
    _, enc = make("zstd").encode(None, x)
    assert decode(enc, like=Limits(5000, 20_100))[0].shape == (5000,)
    with pytest.raises(DecodeError, match="over the limit of 4999"):
        decode(enc, like=Limits(4999, 1 << 20))
    with pytest.raises(DecodeError, match="limit of 1000"):
        decode(enc, like=Limits(10_000, 1000))


def test_bad_like_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="like\\[0\\] must be an array or a \\(shape, dtype\\) pair"):
        decode(Encoded("identity", b""), like=[3])
    with pytest.raises(ValueError, match="like must be Limits"):
        decode(Encoded("identity", b""), like=np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int"):
        Limits(10, -1)
