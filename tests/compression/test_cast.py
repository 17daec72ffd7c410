import numpy as np

from fedkit.compression.cast import from_bf16, to_bf16


def test_fp16_lossless_on_representable_values(roundtrip) -> None:
    x = [np.random.default_rng(0).standard_normal((32, 5)).astype(np.float16).astype(np.float32)]
    y, enc = roundtrip("fp16", x)
    np.testing.assert_array_equal(y[0], x[0])
    assert len(enc.data) <= 2 * x[0].size + 8


def test_fp16_relative_error(roundtrip, model) -> None:
    y, _ = roundtrip("fp16", model)
    for a, b in zip(model, y, strict=True):
        np.testing.assert_allclose(b, a, rtol=2**-11, atol=1e-7)


def test_bf16_rounds_to_nearest_even_and_keeps_range(roundtrip) -> None:
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 3e38, -1e-30, np.inf, np.nan], np.float32)
    back = from_bf16(to_bf16(x))
    np.testing.assert_array_equal(back[:3], [1.0, 1.0, 1 + 2**-6])  # ties go to even
    assert np.isfinite(back[3]) and abs(back[3] / 3e38 - 1) < 2**-8
    assert back[4] < 0 and back[5] == np.inf and np.isnan(back[6])
    v = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    y, enc = roundtrip("bf16", [v])
    np.testing.assert_allclose(y[0], v, rtol=2**-8)
    assert len(enc.data) <= 2 * v.size + 8
