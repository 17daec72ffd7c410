import numpy as np

from fedkit.compression import make


def test_two_valued_vector_is_exact(roundtrip) -> None:
    x = np.where(np.random.default_rng(0).random(1001) < 0.3, -0.75, 0.75).astype(np.float32)
    y, _ = roundtrip("sign", [x.reshape(7, 11, 13)])
    np.testing.assert_array_equal(y[0].ravel(), x)


def test_scale_is_mean_abs_and_signs_kept(roundtrip, model) -> None:
    y, _ = roundtrip("sign", model)
    for a, b in zip(model[:3], y[:3], strict=True):
        np.testing.assert_allclose(np.abs(b), np.abs(a).mean(), rtol=1e-6)
        assert np.all((b < 0) == (a < 0))


def test_one_bit_per_value(roundtrip) -> None:
    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    _, enc = roundtrip("sign", [x])
    assert x.size / 8 <= len(enc.data) <= x.size / 8 + 16
    assert 31.9 < 4 * x.size / enc.nbytes <= 32


def test_after_topk_sends_signs_of_kept_values() -> None:
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    codec = make("topk(ratio=0.01)|sign")
    y = codec.decode(codec.encode(None, [x], None)[1])[0]
    kept = np.flatnonzero(y)
    assert kept.size == 100
    np.testing.assert_array_equal(np.sign(y[kept]), np.sign(x[kept]))
