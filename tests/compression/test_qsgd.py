import numpy as np
import pytest

from fedkit.compression import make


@pytest.mark.parametrize("levels", [1, 4, 16])
def test_unbiased_and_variance_within_qsgd_bound(levels) -> None:
    d = 1000
    v = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    codec = make(f"qsgd(levels={levels})")
    rng = np.random.default_rng(levels)
    draws = 2000
    samples = np.stack([codec.decode(codec.encode(None, [v], rng)[1])[0] for _ in range(draws)])
    sq_norm = float(np.dot(v, v))
    var = np.mean(np.sum((samples - v) ** 2, axis=1))
    assert var <= min(d / levels**2, np.sqrt(d) / levels) * sq_norm
    bias = np.sum((samples.mean(0) - v) ** 2)
    assert bias <= 3 * var / draws  # E||mean - v||^2 = var / draws for an unbiased codec


def test_wire_size() -> None:
    x = np.random.default_rng(0).standard_normal(80_000).astype(np.float32)
    for levels, bits in [(1, 2), (3, 3), (7, 4), (255, 9)]:
        _, enc = make(f"qsgd(levels={levels})").encode(None, [x], np.random.default_rng(0))
        payload = x.size * bits / 8
        assert payload <= len(enc.data) <= payload + 16


def test_zero_vector() -> None:
    z = [np.zeros(10, np.float32)]
    codec = make("qsgd(levels=2)")
    assert not codec.decode(codec.encode(None, z, np.random.default_rng(0))[1])[0].any()
