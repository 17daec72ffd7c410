import numpy as np
import pytest

from fedkit.compression.kmeans import lloyd


@pytest.mark.parametrize("clusters", [2, 3, 16])
def test_two_valued_vector_is_exact(clusters, roundtrip) -> None:
    x = np.where(np.random.default_rng(0).random(999) < 0.5, -0.3, 1.7).astype(np.float32)
    y, _ = roundtrip(f"kmeans(clusters={clusters})", [x])
    np.testing.assert_array_equal(y[0], x)


def test_reconstruction_uses_at_most_k_values_and_beats_uniform(roundtrip) -> None:
    x = np.random.default_rng(0).laplace(size=20_000).astype(np.float32)
    y, enc = roundtrip("kmeans(clusters=8,iters=10)", [x])
    assert np.unique(y[0]).size <= 8
    yq, _ = roundtrip("quant(bits=3)", [x])
    assert np.sum((y[0] - x) ** 2) < np.sum((yq[0] - x) ** 2)  # levels follow the density
    assert len(enc.data) <= x.size * 3 / 8 + 8 * 4 + 16


def test_lloyd_minimises_within_cluster_error() -> None:
    g = np.concatenate([np.full(50, -1.0), np.full(30, 0.2), np.full(20, 5.0)]).astype(np.float32)
    c, assign = lloyd(g, 3, 4)
    np.testing.assert_allclose(c[assign], g)


def test_fedzip_pipeline(roundtrip, model) -> None:
    y, _ = roundtrip("topk(ratio=0.2)|kmeans(clusters=3)|zstd", model)
    w = y[2]
    assert np.count_nonzero(w) <= 0.2 * w.size + 1
    assert np.unique(w[w != 0]).size <= 3
