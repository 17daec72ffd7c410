import numpy as np

from fedkit.compression import make
from fedkit.compression.frame import unpack_arrays


def test_identity_is_lossless_for_every_dtype(roundtrip, model) -> None:
    x = [*model, np.arange(6, dtype=np.int64).reshape(2, 3), np.array([True, False]),
         np.linspace(0, 1, 5)]
    y, enc = roundtrip("identity", x)
    assert enc.codec == "identity"
    for a, b in zip(x, y, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert len(unpack_arrays(enc.data)) == len(x)  # wire format unchanged: raw frame


def test_identity_is_dropped_inside_pipelines() -> None:
    assert make("identity|sign").spec == "sign"
