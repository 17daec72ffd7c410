import numpy as np

from fedkit.compression import make
from fedkit.compression.topk import keep_count


def test_only_values_and_a_seed_travel(roundtrip) -> None:
    n = 100_000
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y, enc = roundtrip("randk(ratio=0.01)", [x])
    k = keep_count(n, 0.01)
    assert k * 4 + 8 <= len(enc.data) <= k * 4 + 8 + 8  # values + seed + tiny header
    kept = np.flatnonzero(y[0])
    assert kept.size == k
    np.testing.assert_array_equal(y[0][kept], x[kept])


def test_seed_changes_with_rng_and_bytes_reproduce(roundtrip, model) -> None:
    (_, a), (_, b), (_, c) = (roundtrip("randk(ratio=0.1)", model, s) for s in (1, 1, 2))
    assert a == b and a != c


def test_scaled_randk_is_unbiased() -> None:
    x = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    codec = make("randk(ratio=0.1,scale=True)")
    rng = np.random.default_rng(1)
    errs = []
    for draws in (200, 3200):
        s = np.stack([codec.decode(codec.encode(None, [x], rng)[1])[0] for _ in range(draws)])
        var = np.mean(np.sum((s - x) ** 2, 1))
        np.testing.assert_allclose(var, (1 / 0.1 - 1) * np.dot(x, x), rtol=0.1)  # (d/k-1)||x||^2
        errs.append(np.sum((s.mean(0) - x) ** 2))
        assert errs[-1] <= 3 * var / draws
    assert errs[1] < errs[0]
