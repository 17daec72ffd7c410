import numpy as np
import pytest

from fedkit.compression import make
from fedkit.compression.select import Candidate, layer_table, plan, select


def _table(rng, layers=12, options=6):
    table = []
    for _ in range(layers):
        sizes = np.sort(rng.integers(10, 1000, options))
        errors = np.sort(rng.uniform(0, 10, options))[::-1]
        table.append([Candidate(i, float(e), int(s)) for i, (e, s) in
                      enumerate(zip(errors, sizes, strict=True))])
    return table


def test_budget_respected_and_never_larger_than_uniform() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        table = _table(rng)
        uniform = int(rng.integers(0, 6))
        picks = select(table, uniform=uniform)
        base = [row[uniform] for row in table]
        assert sum(c.error for c in picks) <= sum(c.error for c in base) * (1 + 1e-12)
        assert sum(c.size for c in picks) <= sum(c.size for c in base)


def test_matches_brute_force_on_small_tables() -> None:
    import itertools

    rng = np.random.default_rng(1)
    for _ in range(10):
        table = _table(rng, layers=4, options=4)
        floor = sum(min(c.error for c in row) for row in table)
        budget = floor + float(rng.uniform(0.5, 15))
        picks = select(table, budget)
        best = min(
            (sum(c.size for c in combo) for combo in itertools.product(*table)
             if sum(c.error for c in combo) <= budget * (1 - 1e-3)),
            default=None,
        )
        assert sum(c.error for c in picks) <= budget
        if best is not None:  # optimal up to the error discretisation
            assert sum(c.size for c in picks) <= best


def test_infeasible_and_zero_budgets() -> None:
    table = [[Candidate(1, 5.0, 10), Candidate(2, 0.0, 99)], [Candidate(1, 0.0, 7)]]
    assert [c.setting for c in select(table, 0.0)] == [2, 1]
    with pytest.raises(ValueError, match="fits"):
        select([[Candidate(1, 5.0, 10)]], 1.0)
    with pytest.raises(ValueError, match="budget or a uniform"):
        select(table)


def _with_spectrum(s, n=48, m=40, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return (u[:, : len(s)] * s @ v[:, : len(s)].T).astype(np.float32)


def test_slow_spectra_get_higher_ranks() -> None:
    k = np.arange(40)
    fast = _with_spectrum(0.5**k, seed=1)  # fast decay: rank 1-2 captures it
    slow = _with_spectrum(1 / (1 + k) ** 0.3, seed=2)  # slow decay: needs many ranks
    bias = np.ones(40, np.float32)
    arrays = [fast, slow, bias]
    ranks = list(range(1, 17))
    table = layer_table(arrays, "powersgd", ranks)
    assert len(table) == 3 and len({c.size for c in table[2]}) == 1  # bias: raw only
    np.testing.assert_allclose(table[0][0].error, np.sum(0.5 ** (2 * k[1:])), rtol=1e-3)
    picks = select(table, uniform=4)
    assert picks[1].setting > picks[0].setting
    assert sum(c.size for c in picks) < sum(row[3].size for row in table)
    assert sum(c.error for c in picks) <= sum(row[3].error for row in table)
    spec = plan(arrays, "powersgd", ranks, uniform=4)
    assert spec == f"powersgd(rank=[{picks[0].setting},{picks[1].setting},{picks[2].setting}])"
    codec = make(spec)  # usable as a codec right away
    _, enc = codec.encode(codec.init(arrays), arrays, np.random.default_rng(0))
    assert [a.shape for a in codec.decode(enc)] == [a.shape for a in arrays]


def test_plan_for_topk_and_quant() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(5000).astype(np.float32),
              (rng.standard_normal(5000) * (rng.random(5000) < 0.02)).astype(np.float32)]
    spec = plan(arrays, "topk", [0.005, 0.01, 0.05, 0.1], uniform=0.05, then="quant(bits=8)")
    assert spec.startswith("topk(ratio=[") and spec.endswith("|quant(bits=8)")
    qspec = plan(arrays, "quant", [2, 4, 6, 8], uniform=4)
    table = layer_table(arrays, "quant", [2, 4, 6, 8])
    chosen = make(qspec)
    _, enc = chosen.encode(None, arrays, None)
    assert len(enc.data) <= sum(row[1].size for row in table)
