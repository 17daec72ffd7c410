import numpy as np
import pytest
import zstandard

from fedkit.compression import base, decode
from fedkit.types import DecodeError, Encoded


def test_lossless_for_every_dtype_and_compresses_redundancy(roundtrip) -> None:
    x = [np.zeros((100, 100), np.float32), np.arange(10, dtype=np.int16), np.linspace(0, 1, 7)]
    y, enc = roundtrip("zstd(level=3)", x)
    for a, b in zip(x, y, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert enc.nbytes < 1000


def test_follows_any_stage(roundtrip, model) -> None:
    y1, e1 = roundtrip("sign", model)
    y2, e2 = roundtrip("sign|zstd(level=19)", model)
    for a, b in zip(y1, y2, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bombs_and_garbage_raise_decode_error(monkeypatch) -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (1 << 20))
    monkeypatch.setattr(base, "MAX_BYTES", 1 << 16)
    with pytest.raises(DecodeError, match="over the limit of 65536"):
        decode(Encoded("zstd(level=3)", bomb))
    stream = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (1 << 20))
    with pytest.raises(DecodeError, match="beyond the limit of 65536"):
        decode(Encoded("zstd(level=3)", stream))
    with pytest.raises(DecodeError):
        decode(Encoded("zstd(level=3)", b"not a zstd frame at all"))
