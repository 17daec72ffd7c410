import numpy as np
import pytest

from fedkit.compression import make
from fedkit.compression.bits import Reader
from fedkit.compression.topk import decode_indices, encode_indices, keep_count, top_indices


def test_keeps_the_largest_entries_per_tensor(roundtrip, model) -> None:
    y, _ = roundtrip("topk(ratio=0.1)", model)
    for a, b in zip(model, y, strict=True):
        k = keep_count(a.size, 0.1)
        kept = np.flatnonzero(b.ravel())
        assert kept.size == k
        np.testing.assert_array_equal(b.ravel()[kept], a.ravel()[kept])  # values are exact
        assert np.abs(a.ravel()[kept]).min() >= np.sort(np.abs(a.ravel()))[-k]


def test_global_scope_lets_layers_compete(roundtrip) -> None:
    rng = np.random.default_rng(0)
    loud, quiet = 10 * rng.standard_normal(1000), rng.standard_normal(1000)
    x = [loud.astype(np.float32), quiet.astype(np.float32)]
    y, _ = roundtrip("topk(ratio=0.05,scope=global)", x)
    assert np.count_nonzero(y[0]) + np.count_nonzero(y[1]) == 100
    assert np.count_nonzero(y[0]) > 90
    both = np.abs(np.concatenate(x))
    assert np.abs(np.concatenate(y)[np.concatenate(y) != 0]).min() >= np.sort(both)[-100]


@pytest.mark.parametrize("n,k", [(10**6, 10**4), (10**6, 3), (2**20 + 7, 50_000), (1000, 999)])
def test_fast_selection_matches_argpartition(n, k) -> None:
    a = np.abs(np.random.default_rng(n).standard_normal(n).astype(np.float32))
    idx = top_indices(a, k)
    assert idx.size == k and np.all(np.diff(idx) > 0)
    assert a[idx].min() >= np.partition(a, n - k)[n - k]


def test_index_coding_picks_the_smaller_form() -> None:
    n = 100_000
    rng = np.random.default_rng(0)
    for k in (1, 1000, 30_000, n):
        idx = np.sort(rng.choice(n, k, replace=False))
        buf = encode_indices(idx, n)
        assert len(buf) <= n // 8 + 8
        np.testing.assert_array_equal(decode_indices(Reader(buf), n, "t"), idx)
    sparse = encode_indices(np.sort(rng.choice(n, 1000, replace=False)), n)
    assert sparse[2] == 1 and len(sparse) < 1.5 * 1000  # varint gaps: ~1.3 bytes per index
    dense = encode_indices(np.sort(rng.choice(n, 30_000, replace=False)), n)
    assert dense[3] == 0 and len(dense) == -(-n // 8) + 4  # bitmap


def test_wire_size_is_k_values_plus_compact_indices(roundtrip) -> None:
    n = 1 << 21
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    _, enc = roundtrip("topk(ratio=0.01)", [x])
    k = keep_count(n, 0.01)
    gap_bytes = 1 + np.exp(-128 / 100)  # geometric gaps of mean 100: P(gap >= 128) ~ e^-1.28
    assert k * 4 + k * 1.0 < len(enc.data) <= k * (4 + gap_bytes * 1.05) + 32
    _, enc8 = roundtrip("topk(ratio=0.01)|quant(bits=8)", [x])
    assert len(enc8.data) <= k * (1 + gap_bytes * 1.05) + 40
    assert 4 * n / enc8.nbytes > 150


def test_empty_and_tiny_tensors(roundtrip) -> None:
    x = [np.zeros(0, np.float32), np.array(3.0, np.float32), np.ones((1, 1), np.float32)]
    y, _ = roundtrip("topk(ratio=0.001)", x)
    assert y[0].size == 0 and y[1] == 3.0 and y[2][0, 0] == 1.0


def test_ties_keep_exactly_k(roundtrip) -> None:
    x = [np.ones(1000, np.float32)]
    y, _ = roundtrip("topk(ratio=0.1)", x)
    assert np.count_nonzero(y[0]) == 100


def test_encode_is_deterministic_without_rng() -> None:
    x = [np.random.default_rng(0).standard_normal(500).astype(np.float32)]
    codec = make("topk(ratio=0.1)")
    assert codec.encode(None, x, None)[1] == codec.encode(None, x, None)[1]
