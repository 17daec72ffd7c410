import numpy as np

from fedkit.compression import make


def _low_rank(n, m, r, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, r)) @ rng.standard_normal((r, m))).astype(np.float32)


def test_low_rank_matrix_recovered_in_one_step(roundtrip) -> None:
    m = _low_rank(60, 40, 3)
    conv = _low_rank(8, 27, 2).reshape(8, 3, 3, 3)
    y, enc = roundtrip("powersgd(rank=3)", [m, conv])
    np.testing.assert_allclose(y[0], m, atol=1e-3 * np.abs(m).max())
    np.testing.assert_allclose(y[1], conv, atol=1e-3 * np.abs(conv).max())
    assert len(enc.data) <= 4 * 3 * (60 + 40 + 8 + 27) + 32  # r*(n+m) floats per tensor


def test_small_tensors_are_sent_raw_and_rank_zero_sends_nothing(roundtrip) -> None:
    bias, tiny = np.arange(5, dtype=np.float32), np.ones((3, 4), np.float32)
    big = _low_rank(50, 50, 1)
    y, enc = roundtrip("powersgd(rank=2)", [bias, tiny, big])
    np.testing.assert_array_equal(y[0], bias)
    np.testing.assert_array_equal(y[1], tiny)  # 2*(3+4) >= 12: raw
    y, enc0 = roundtrip("powersgd(rank=[2,2,0])", [bias, tiny, big])
    assert not y[2].any() and len(enc0.data) < 5 * 4 + 12 * 4 + 32


def test_warm_start_converges_to_the_best_rank_r_approximation() -> None:
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((80, 80)))
    v, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    s = np.array([10, 5, 2, 1.5] + [0.1] * 56)
    m = (u[:, :60] * s @ v.T).astype(np.float32)
    codec = make("powersgd(rank=2)")
    state = codec.init([m])
    errs = []
    for _ in range(15):
        state, enc = codec.encode(state, [m], rng)
        errs.append(np.sum((codec.decode(enc)[0] - m) ** 2))
    best = np.sum(s[2:] ** 2)
    assert errs[-1] <= best * 1.01 < errs[0]
    assert state[0].shape == (60, 2)
