"""LoRA aggregation variants: the invariants of each paper on small hand-checkable cases.

Tolerances: the variants compute in float64; on float64 factors the exact variants (fedex, flora)
match the average of merged weights to 1e-12 (absolute, entries of order 1), on float32 factors
to 1e-6 (the float32 cast of the averaged factors is folded into fedex's residual, so only the
float64 products' rounding remains). FedSVD's re-factorisation keeps B A to 1e-12 in float64 and
1e-5 in float32, and A A^T = I to the same.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.aggregation.lora import (
    LORA_AGGREGATIONS,
    factor_gap,
    fedex,
    fedit,
    fedsa,
    fedsvd,
    ffa,
    flexlora,
    flora,
    lora_layout,
    make_lora_aggregator,
    merged_delta,
    personalise,
    ranks_from_devices,
    refactor,
)
from fedkit.aggregation.server_opt import adam, sgd
from fedkit.rng import rng
from fedkit.types import Update

NAMES = ["m.1.lora_A.weight", "m.1.lora_B.weight", "head.weight"]


def _layout(d_in: int = 64, d_out: int = 64, r: int = 4, alpha: float | None = 8.0):
    return lora_layout(NAMES, [(r, d_in), (d_out, r), (3, d_out)], alpha=alpha)


def _clients(layout, k: int, seed: int = 0, dtype=np.float64, rank: int | None = None):
    out = []
    for i in range(k):
        g = rng(seed, "client", i)
        r = rank or layout.pairs[0].rank
        shapes = layout.with_rank(r).shapes
        out.append([g.normal(size=s).astype(dtype) for s in shapes])
    return out


def _exact(layout, clients, weights):
    p = np.asarray(weights, float) / np.sum(weights)
    pair = layout.pairs[0]
    return sum(w * merged_delta(layout, c, pair) for c, w in zip(clients, p, strict=True))


def test_layout_pairs_peft_names_and_refuses_half_pairs():
    names = ["base_model.model.1.lora_A.default.weight", "base_model.model.1.lora_B.default.weight",
             "base_model.model.3.lora_A.weight", "base_model.model.3.lora_B.weight", "cls.bias"]
    lay = lora_layout(names, [(4, 64), (64, 4), (4, 64), (10, 4), (10,)], alpha=8)
    assert [p.prefix for p in lay.pairs] == ["base_model.model.1", "base_model.model.3"]
    assert lay.others == (4,) and lay.scaling(4) == 2.0
    with pytest.raises(ValueError, match="has no matching lora_B"):
        lora_layout(names[:1], [(4, 64)])
    with pytest.raises(ValueError, match=r"are not \(r, in\) and \(out, r\)"):
        lora_layout(names[:2], [(4, 64), (64, 3)])
    with pytest.raises(ValueError, match="no LoRA adapter tensors"):
        lora_layout(["w"], [(2, 2)])


def test_fedit_factor_gap_hand_case_and_random():
    # 1x1 factors, s = 1: client products 1*2 = 2 and 3*0 = 0, exact mean 1; FedIT: 2 * 1 = 2.
    lay = lora_layout(NAMES[:2], [(1, 1), (1, 1)])
    c1 = [np.array([[2.0]]), np.array([[1.0]])]
    c2 = [np.array([[0.0]]), np.array([[3.0]])]
    assert factor_gap(lay, [c1, c2], [1, 1]) == pytest.approx(1.0)
    g = fedit(lay, [c1, c2], [1, 1]).params
    assert g[0][0, 0] == 1.0 and g[1][0, 0] == 2.0
    lay = _layout()
    assert factor_gap(lay, _clients(lay, 4), [1, 2, 3, 4]) > 0.1


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_fedex_merged_model_is_the_average_of_merged_models(dtype, tol):
    lay = _layout()
    clients, w = _clients(lay, 5, dtype=dtype), [3, 1, 4, 1, 5]
    out = fedex(lay, clients, w)
    pair = lay.pairs[0]
    merged = out.base[pair.prefix] + merged_delta(lay, out.params, pair)  # W0 cancels
    assert np.max(np.abs(merged - _exact(lay, clients, w))) < tol
    assert np.max(np.abs(out.base[pair.prefix])) > 0.1  # the residual is really needed
    np.testing.assert_array_equal(out.params[2], fedit(lay, clients, w).params[2])


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_flora_stack_is_exact_with_heterogeneous_ranks_and_grows_the_downlink(dtype, tol):
    lay = _layout(alpha=8.0)
    clients = _clients(lay, 2, dtype=dtype, rank=4) + _clients(lay, 1, seed=1, dtype=dtype, rank=2)
    w = [1, 2, 3]
    out = flora(lay, clients, w, global_params=clients[0], seed=7, round=3)
    pair = lay.pairs[0]
    assert np.max(np.abs(out.base[pair.prefix] - _exact(lay, clients, w))) < tol
    assert out.downlink_rank == {pair.prefix: 4 + 4 + 2}
    # the next round starts from a fresh adapter, the same on every client and re-drawn per round
    assert not np.any(out.params[pair.b]) and out.params[pair.a].shape == (4, 64)
    again = flora(lay, clients, w, global_params=clients[0], seed=7, round=3).params
    np.testing.assert_array_equal(out.params[pair.a], again[pair.a])
    other = flora(lay, clients, w, global_params=clients[0], seed=7, round=4).params
    assert not np.array_equal(out.params[pair.a], other[pair.a])


def test_fedsvd_refactor_keeps_the_product_and_orthonormalises_a():
    # hand case: B A = [[3, 0], [0, 4]] with r = 2 -> singular values 4, 3
    lay = lora_layout(NAMES[:2], [(2, 2), (2, 2)])
    p = refactor(lay, [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 0.0], [0.0, 2.0]])])
    np.testing.assert_allclose(p[1] @ p[0], [[3.0, 0.0], [0.0, 4.0]], atol=1e-12)
    np.testing.assert_allclose(np.abs(p[1]), [[0.0, 3.0], [4.0, 0.0]], atol=1e-12)
    for dtype, tol in [(np.float64, 1e-12), (np.float32, 1e-5)]:
        lay = _layout()
        g = _clients(lay, 1, seed=5, dtype=dtype)[0]
        clients = [[g[0], c[1], c[2]] for c in _clients(lay, 3, dtype=dtype)]  # A frozen
        out = fedsvd(lay, clients, [1, 1, 2], global_params=g).params
        avg_b = sum(w * c[1].astype(np.float64) for c, w in zip(clients, [0.25, 0.25, 0.5], strict=True))
        np.testing.assert_allclose(out[1].astype(float) @ out[0].astype(float),
                                   avg_b @ g[0].astype(float), atol=tol * 10)
        np.testing.assert_allclose(out[0].astype(float) @ out[0].astype(float).T, np.eye(4),
                                   atol=tol)
    # period: no re-factorisation before it is due
    kept = fedsvd(lay, clients, [1, 1, 2], global_params=g, round=0, period=2).params
    np.testing.assert_array_equal(kept[0], g[0])


def _toy_round(agg, params, rounds, clients=("c0", "c1", "c2"), seed=0):
    """Clients pull every trainable tensor towards a client-specific target (a toy local step)."""
    state = agg.init(params)
    train = set(agg.variant.trainable(agg.layout.names))
    seen = []
    for t in range(rounds):
        ups = []
        locals_ = {}
        for c in clients:
            sent = agg.for_client(params, c)
            g = rng(seed, "toy", t, c)
            local = [s + 0.1 * g.normal(size=s.shape) if n in train else s.copy()
                     for n, s in zip(agg.layout.names, sent, strict=True)]
            locals_[c] = local
            ups.append(Update(c, [a - s for a, s in zip(local, sent, strict=True)], 10))
        state, params = agg.step(state, params, ups)
        seen.append(locals_)
    return state, params, seen


def test_ffa_a_is_identical_on_every_client_after_any_number_of_rounds():
    lay = _layout()
    init = _clients(lay, 1, seed=9, dtype=np.float32)[0]
    init[1] = np.zeros_like(init[1])  # B = 0 as peft initialises it
    agg = make_lora_aggregator("ffa", lay.names, lay.shapes, alpha=8)
    assert agg.variant.trainable(lay.names) == ("m.1.lora_B.weight", "head.weight")
    assert agg.variant.uplink(lay.names) == ("m.1.lora_B.weight", "head.weight")
    _, params, seen = _toy_round(agg, init, rounds=6)
    for locals_ in seen:
        for local in locals_.values():
            np.testing.assert_array_equal(local[0], init[0])
    np.testing.assert_array_equal(params[0], init[0])
    assert np.any(params[1] != 0)
    # a client that trained A is refused, naming the tensor
    bad = [np.full_like(a, 0.1) for a in init]
    with pytest.raises(ValueError, match="c9.*lora_A.weight changed.*frozen"):
        agg.step(agg.init(init), init, [Update("c9", bad, 1)])
    with pytest.raises(ValueError, match="lora_A.weight changed"):
        ffa(lay, [bad], [1], global_params=init)


def test_fedsa_shares_a_and_keeps_b_personal():
    lay = _layout()
    g = _clients(lay, 1, seed=3)[0]
    clients = _clients(lay, 3)
    out = fedsa(lay, clients, [1, 1, 1], global_params=g).params
    np.testing.assert_allclose(out[0], np.mean([c[0] for c in clients], axis=0), atol=1e-12)
    np.testing.assert_array_equal(out[1], g[1])  # the clients' B never reached the server
    mine = personalise(lay, out, clients[1])
    np.testing.assert_array_equal(mine[1], clients[1][1])
    np.testing.assert_array_equal(mine[0], out[0])
    assert LORA_AGGREGATIONS["fedsa"].kept(lay.names) == ("m.1.lora_B.weight",)
    assert LORA_AGGREGATIONS["fedsa"].uplink(lay.names) == ("m.1.lora_A.weight", "head.weight")


def test_flexlora_hands_each_client_its_own_rank():
    lay = _layout(r=8)
    clients = [_clients(lay, 1, seed=i, rank=r)[0] for i, r in enumerate([2, 4, 8])]
    out = flexlora(lay, clients, [1, 1, 1], client_ids=["a", "b", "c"], ranks=[2, 4, 8])
    dense = _exact(lay, clients, [1, 1, 1])
    s = np.linalg.svd(dense, compute_uv=False)
    for cid, r in [("a", 2), ("b", 4), ("c", 8)]:
        p = out.clients[cid]
        assert p[0].shape == (r, 64) and p[1].shape == (64, r)
        err = np.linalg.norm(dense - merged_delta(lay, p, lay.with_rank(r).pairs[0]))
        assert err == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-9)  # Eckart-Young
    # through the engine seam: ranks come from device profiles; updates at each client's rank
    ranks = ranks_from_devices({"a": "phone", "b": "rpi4", "c": "laptop"},
                               {"phone": 2, "rpi4": 4, "laptop": 8})
    init = _clients(lay, 1, seed=11)[0]
    agg = make_lora_aggregator("flexlora", lay.names, lay.shapes, alpha=8, ranks=ranks)
    _, params, seen = _toy_round(agg, init, rounds=2, clients=("a", "b", "c"))
    for cid, r in ranks.items():
        assert agg.for_client(params, cid)[0].shape == (r, 64)
        assert seen[1][cid][1].shape == (64, r)
    with pytest.raises(ValueError, match="profile 'tv'.*no LoRA rank"):
        ranks_from_devices({"a": "tv"}, {"phone": 2})
    with pytest.raises(ValueError, match="above the server's 8"):
        make_lora_aggregator("flexlora", lay.names, lay.shapes, ranks={"a": 16})


def test_server_steps_compose_where_the_maths_allows():
    lay = _layout()
    init = _clients(lay, 1, seed=2, dtype=np.float32)[0]
    for name in ("fedit", "ffa", "fedsa"):
        agg = make_lora_aggregator(name, lay.names, lay.shapes, server_opt=adam(lr=0.01))
        state, params, _ = _toy_round(agg, init, rounds=2)
        assert "m" in state and all(np.all(np.isfinite(p)) for p in params)
    for name in ("fedex", "flora", "flexlora", "fedsvd"):
        with pytest.raises(ValueError, match="server SGD only"):
            make_lora_aggregator(name, lay.names, lay.shapes, server_opt=adam())
    with pytest.raises(ValueError, match="server lr must be 1"):
        make_lora_aggregator("fedex", lay.names, lay.shapes, server_opt=sgd(0.5))
    # fedsvd with a server lr: the re-factorisation follows the server step, A A^T = I still
    agg = make_lora_aggregator("fedsvd", lay.names, lay.shapes, server_opt=sgd(0.5), period=1)
    _, params, _ = _toy_round(agg, init, rounds=2)
    np.testing.assert_allclose(params[0] @ params[0].T, np.eye(4), atol=1e-5)
    with pytest.raises(ValueError, match="did you mean 'fedex'"):
        make_lora_aggregator("fedx", lay.names, lay.shapes)
    with pytest.raises(ValueError, match="no option 'period'"):
        make_lora_aggregator("fedit", lay.names, lay.shapes, period=2)


def test_fedex_base_offsets_accumulate_in_checkpointable_state():
    from fedkit.aggregation import state_from_arrays, state_to_arrays

    lay = _layout()
    init = _clients(lay, 1, seed=4)[0]
    agg = make_lora_aggregator("fedex", lay.names, lay.shapes, alpha=8)
    state, params, seen = _toy_round(agg, init, rounds=3)
    pair = lay.pairs[0]
    last = list(seen[-1].values())
    merged = agg.base_offsets(state)[pair.prefix] + merged_delta(lay, params, pair)
    # after round 3 the global merged adapter = mean of the clients' merged adapters (W0 + base)
    prev = agg.base_offsets(_toy_round(agg, init, rounds=2)[0])[pair.prefix]
    want = prev + np.mean([merged_delta(lay, c, pair) for c in last], axis=0)
    np.testing.assert_allclose(merged, want, atol=1e-12)
    back = state_from_arrays(state_to_arrays(state))
    np.testing.assert_array_equal(agg.base_offsets(back)[pair.prefix], agg.base_offsets(state)[pair.prefix])
    assert int(back["lora.round"][0]) == 3


def test_dp_lora_noises_only_what_travels_and_bounds_each_client():
    from fedkit.aggregation.lora import LoraDP

    lay = _layout(d_in=64, d_out=256)
    init = _clients(lay, 1, seed=6)[0]
    names = lay.names
    # z = 0: one client's enormous update moves the model by at most clip_norm / n
    dp = LoraDP(clip_norm=1.0, noise_multiplier=0.0, expected_clients=4)
    agg = make_lora_aggregator("fedit", names, lay.shapes, dp=dp)
    huge = [1e6 * np.ones_like(a) for a in init]
    _, p = agg.step(agg.init(init), init, [Update("c0", huge, 1)])
    moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(p, init, strict=True)))
    assert moved == pytest.approx(1.0 / 4, rel=1e-9)
    # z > 0 under ffa: A untouched (exactly shared), B carries noise of std z C / n
    dp = LoraDP(clip_norm=2.0, noise_multiplier=1.5, expected_clients=3)
    agg = make_lora_aggregator("ffa", names, lay.shapes, dp=dp, seed=1)
    zero = [np.zeros_like(a) for a in init]
    _, p = agg.step(agg.init(init), init, [Update(c, zero, 1) for c in ("a", "b", "c")])
    np.testing.assert_array_equal(p[0], init[0])
    noise = (p[1] - init[1]).ravel()
    assert np.std(noise) == pytest.approx(1.5 * 2.0 / 3, rel=0.1)
    # fedit noises both factors
    agg = make_lora_aggregator("fedit", names, lay.shapes, dp=dp, seed=1)
    _, p = agg.step(agg.init(init), init, [Update(c, zero, 1) for c in ("a", "b", "c")])
    assert not np.array_equal(p[0], init[0])
    with pytest.raises(ValueError, match="DP-LoRA.*'fedex' does not average factors"):
        make_lora_aggregator("fedex", names, lay.shapes, dp=dp)


def test_wire_bytes_per_variant():
    from fedkit.aggregation.lora import wire_bytes

    lay = _layout(d_in=64, d_out=64, r=4)  # one pair: A, B 4 x 64 = 256 values each; head 192
    cs = ["a", "b", "c"]

    def wb(name, **kw):
        return wire_bytes(make_lora_aggregator(name, lay.names, lay.shapes, **kw), cs)

    assert wb("fedit")["a"] == {"up": (512 + 192) * 4, "down": (512 + 192) * 4}
    assert wb("ffa")["a"] == {"up": (256 + 192) * 4, "down": (256 + 192) * 4}  # A never travels
    assert wb("fedsa")["a"] == {"up": (256 + 192) * 4, "down": (256 + 192) * 4}
    assert wb("fedsvd")["a"]["up"] == (256 + 192) * 4
    assert wb("fedex")["a"]["down"] == (512 + 192 + 64 * 64) * 4
    assert wb("flora")["a"]["down"] == (3 * 512 + 192) * 4  # the stack of three clients
    flex = wb("flexlora", ranks={"a": 1, "b": 2})
    assert flex["a"]["up"] == (128 + 192) * 4 and flex["c"]["up"] == (512 + 192) * 4
