"""SecAgg+ outcomes: exact sums, dropouts per stage, aborts, tampering, what the server holds."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from fedkit import rng as frng
from fedkit.secure import field as fq
from fedkit.secure import secagg as sa
from fedkit.secure.secagg_local import run_local

D = 40


def _setup(n: int, seed: int = 0, **cfg: object) -> tuple[sa.SecAggConfig, dict[str, np.ndarray]]:
    spec = fq.FieldSpec.for_clients(n, 1.0)
    config = sa.SecAggConfig(dim=D, field=spec, seed=seed, **cfg)  # type: ignore[arg-type]
    names = [f"c{i:02d}" for i in range(n)]
    xs = {c: fq.quantize(spec, frng.rng(seed, "x", 0, c).normal(0, 0.4, D),
                         frng.rng(seed, "q", 0, c)) for c in names}
    return config, xs


def _plain(xs: Mapping[str, np.ndarray], who: tuple[str, ...]) -> np.ndarray:
    return np.sum([xs[c].astype(np.uint64) for c in who], axis=0)


def test_unmasked_sum_equals_plain_sum_exactly() -> None:
    config, xs = _setup(10)
    run = run_local(config, 0, xs)
    assert run.aggregate.survivors == tuple(sorted(xs))
    assert run.aggregate.total.dtype == np.uint32
    assert np.array_equal(run.aggregate.total.astype(np.uint64), _plain(xs, tuple(xs)))
    floats = fq.dequantize_sum(config.field, run.aggregate.total, 10)
    want = np.sum([np.clip(frng.rng(0, "x", 0, c).normal(0, 0.4, D), -1, 1)
                   for c in sorted(xs)], axis=0)
    assert np.max(np.abs(floats - want)) <= 10 * config.field.step


def test_sparse_graph_masks_only_with_k_neighbours() -> None:
    config, xs = _setup(16, degree=6)
    run = run_local(config, 0, xs, keep_states=True)
    final = run.server_states[-1]
    assert final.degree == 6 and final.threshold == 4
    assert all(len(v) == 6 for v in final.graph.values())
    assert np.array_equal(run.aggregate.total.astype(np.uint64), _plain(xs, tuple(xs)))
    full = run_local(dataclasses.replace(config, degree=None, complete=True), 0, xs)
    # a client's traffic grows with its degree: 6 neighbours cost less than 15
    assert sum(run.up_bytes.values()) < sum(full.up_bytes.values())
    assert np.array_equal(full.aggregate.total, run.aggregate.total)


@pytest.mark.parametrize("stage", sa.STAGES)
def test_dropouts_at_each_stage_up_to_the_threshold(stage: str) -> None:
    config, xs = _setup(16, degree=6)  # t = 4: every client may lose 2 of its 6 neighbours
    graph = run_local(config, 0, xs, keep_states=True).server_states[-1].graph
    gone = _independent(graph, 2)
    run = run_local(config, 0, xs, drop={stage: gone})
    # dropping before the masked input removes the input; dropping at unmask does not
    expect = tuple(c for c in sorted(xs) if stage == "unmask" or c not in gone)
    assert run.aggregate.survivors == expect
    assert np.array_equal(run.aggregate.total.astype(np.uint64), _plain(xs, expect))


def test_dropouts_at_every_stage_in_one_round() -> None:
    config, xs = _setup(12)  # complete graph k = 11, t = 6: 5 may drop in all
    drop = {"advertise-keys": ["c00"], "share-keys": ["c04"], "masked-input": ["c07", "c09"],
            "unmask": ["c02"]}
    run = run_local(config, 0, xs, drop=drop)
    expect = tuple(c for c in sorted(xs) if c not in {"c00", "c04", "c07", "c09"})
    assert run.aggregate.survivors == expect
    assert np.array_equal(run.aggregate.total.astype(np.uint64), _plain(xs, expect))


@pytest.mark.parametrize(
    ("stage", "ndrop", "needed", "got"),
    [("advertise-keys", 9, 2, 1), ("share-keys", 5, 5, 4), ("masked-input", 5, 5, 4),
     ("unmask", 5, 5, 4)],
)
def test_beyond_the_threshold_aborts_naming_stage_and_counts(
    stage: str, ndrop: int, needed: int, got: int,
) -> None:
    config, xs = _setup(10)  # complete graph, k = 9, t = 5
    gone = sorted(xs)[:ndrop]
    with pytest.raises(sa.SecAggAbort, match=f"aborted at stage '{stage}'") as err:
        run_local(config, 0, xs, drop={stage: gone})
    assert (err.value.stage, err.value.needed, err.value.got) == (stage, needed, got)
    # one fewer dropout is still fine (advertise-keys: 8 leave 2 clients)
    run = run_local(config, 0, xs, drop={stage: gone[1:]})
    assert np.array_equal(run.aggregate.total.astype(np.uint64),
                          _plain(xs, run.aggregate.survivors))


def test_server_state_never_holds_an_individual_input() -> None:
    config, xs = _setup(8)
    masked: dict[str, bytes] = {}

    def spy(stage: str, sender: str, receiver: str, data: bytes) -> bytes:
        if stage == "masked-input" and receiver == "server":
            masked[sender] = data
        return data

    run = run_local(config, 0, xs, keep_states=True, tamper=spy)
    singles = [x.tobytes() for x in xs.values()]
    seen_arrays = 0
    for state in run.server_states:
        for value in _walk(state):
            if isinstance(value, np.ndarray):
                seen_arrays += 1
                assert all(value.tobytes() != s for s in singles)
                for c in xs:  # nor a masked input minus nothing but its own x
                    assert not np.array_equal(value, xs[c])
            elif isinstance(value, bytes):
                assert all(s not in value for s in singles)
    assert seen_arrays >= len(xs)  # the running sum was inspected at every step
    # the masked inputs that crossed the wire do not reveal the input either
    for c, data in masked.items():
        vec = sa.decode_message(data).vector  # type: ignore[union-attr]
        assert np.mean(vec == xs[c]) < 0.01


def test_tampered_share_ciphertext_is_refused() -> None:
    config, xs = _setup(6)

    def flip(stage: str, sender: str, receiver: str, data: bytes) -> bytes:
        if stage == "share-keys" and sender == "c03":
            msg = sa.decode_message(data)
            (to, ct), *rest = msg.sealed  # type: ignore[union-attr]
            bad = ct[:-1] + bytes([ct[-1] ^ 0x40])
            return sa.encode_message(dataclasses.replace(msg, sealed=((to, bad), *rest)))
        return data

    with pytest.raises(sa.SecAggError, match="from c03 failed authentication"):
        run_local(config, 0, xs, tamper=flip)


def test_share_redirected_to_another_client_is_refused() -> None:
    config, xs = _setup(6)

    def swap(stage: str, sender: str, receiver: str, data: bytes) -> bytes:
        if stage == "share-keys" and receiver == "server":
            msg = sa.decode_message(data)
            (a, ca), (b, cb), *rest = msg.sealed  # type: ignore[union-attr]
            return sa.encode_message(dataclasses.replace(msg, sealed=((a, cb), (b, ca), *rest)))
        return data

    with pytest.raises(sa.SecAggError, match="failed authentication"):
        run_local(config, 0, xs, tamper=swap)


def test_reproducible_from_a_seed() -> None:
    config, xs = _setup(9)
    a, b = run_local(config, 3, xs, secret_seed=7), run_local(config, 3, xs, secret_seed=7)
    assert np.array_equal(a.aggregate.total, b.aggregate.total)
    assert a.up_bytes == b.up_bytes and a.down_bytes == b.down_bytes

    def capture(into: list[bytes]):  # noqa: ANN202
        def hook(stage: str, sender: str, receiver: str, data: bytes) -> bytes:
            into.append(data)
            return data
        return hook

    w1: list[bytes] = []
    w2: list[bytes] = []
    w3: list[bytes] = []
    run_local(config, 3, xs, secret_seed=7, tamper=capture(w1))
    run_local(config, 3, xs, secret_seed=7, tamper=capture(w2))
    c = run_local(config, 3, xs, secret_seed=8, tamper=capture(w3))
    assert w1 == w2  # every byte on the wire is the same
    assert w1 != w3 and np.array_equal(c.aggregate.total, a.aggregate.total)


def test_messages_round_trip_through_bytes() -> None:
    msgs = [
        sa.AdvertiseKeys(1, "a", b"e" * 32, b"m" * 32),
        sa.Neighbours(1, "a", 2, (sa.PeerKeys("b", b"1" * 32, b"2" * 32),)),
        sa.ShareKeys(1, "a", (("b", b"ct"), ("c", b""))),
        sa.ShareInbox(1, "a", ()),
        sa.MaskedInput(1, "ä", np.arange(5, dtype=np.uint32)),
        sa.UnmaskRequest(1, "a", ("b",), ("c", "d")),
        sa.UnmaskShares(1, "a", (("b", b"s"),), ()),
    ]
    for m in msgs:
        back = sa.decode_message(sa.encode_message(m))
        assert type(back) is type(m)
        if isinstance(m, sa.MaskedInput):
            assert np.array_equal(back.vector, m.vector) and back.client == m.client
        else:
            assert back == m
    for junk in (b"", b"FKSA\x09", b"FKSA\x01\xff\xff\xff\xff", b"nope"):
        with pytest.raises(sa.SecAggError):
            sa.decode_message(junk)


def test_protocol_order_is_enforced() -> None:
    config, xs = _setup(4)
    server = sa.server_init(config, 0, list(xs))
    states, adv = {}, {}
    for c in xs:
        states[c], adv[c] = sa.advertise(config, 0, c, sa.sim_secret(0, 0, c))
    server = sa.receive(server, adv["c00"])
    with pytest.raises(sa.SecAggError, match="second message"):
        sa.receive(server, adv["c00"])
    with pytest.raises(sa.SecAggError, match="before stage 'masked-input'"):
        sa.receive(server, sa.MaskedInput(0, "c00", xs["c00"]))
    for c in ("c01", "c02", "c03"):
        server = sa.receive(server, adv[c])
    server, neigh = sa.close_advertise(server)
    with pytest.raises(sa.LateMessage):
        sa.receive(server, adv["c01"])
    with pytest.raises(sa.SecAggError, match="in stage 'share-keys'"):
        sa.unmask(states["c00"], sa.UnmaskRequest(0, "c00", (), ()))
    with pytest.raises(sa.SecAggError, match="round"):
        sa.share_keys(states["c00"], dataclasses.replace(neigh["c00"], round=1))


def test_client_never_reveals_both_secrets_of_one_neighbour() -> None:
    config, xs = _setup(4)
    server = sa.server_init(config, 0, list(xs))
    states = {}
    for c in xs:
        states[c], m = sa.advertise(config, 0, c, sa.sim_secret(0, 0, c))
        server = sa.receive(server, m)
    server, out = sa.close_advertise(server)
    for c in xs:
        states[c], m = sa.share_keys(states[c], out[c])
        server = sa.receive(server, m)
    server, inbox = sa.close_share_keys(server)
    st, _ = sa.masked_input(states["c00"], inbox["c00"], xs["c00"])
    both = sa.UnmaskRequest(0, "c00", ("c01", "c02", "c03"), ("c01",))
    with pytest.raises(sa.SecAggError, match="exactly once"):
        sa.unmask(st, both)


def test_bad_configuration_and_overflow_raise() -> None:
    spec = fq.FieldSpec.for_clients(10, 1.0)
    with pytest.raises(ValueError, match="overflows"):
        sa.server_init(sa.SecAggConfig(dim=3, field=spec), 0, [f"c{i}" for i in range(11)])
    with pytest.raises(ValueError, match="min_survivors"):
        sa.SecAggConfig(dim=3, field=spec, min_survivors=1)
    with pytest.raises(ValueError, match="not both"):
        sa.SecAggConfig(dim=3, field=spec, degree=4, complete=True)
    config, xs = _setup(4)
    st, _ = sa.advertise(config, 0, "c00", sa.sim_secret(0, 0, "c00"))
    with pytest.raises(ValueError, match="32 bytes"):
        sa.advertise(config, 0, "c00", b"short")


def _independent(graph: Mapping[str, tuple[str, ...]], per_hood: int) -> list[str]:
    """Greedy set of clients such that no client loses more than ``per_hood`` neighbours."""
    lost = dict.fromkeys(graph, 0)
    out: list[str] = []
    for c in sorted(graph):
        if all(lost[v] < per_hood for v in graph[c]) and len(out) < 4:
            out.append(c)
            for v in graph[c]:
                lost[v] += 1
    assert len(out) >= 2
    return out


def _walk(value: object) -> Iterator[object]:
    """Every leaf value inside a state: dataclass fields, mappings, sequences."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(k)
            yield from _walk(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _walk(v)
    else:
        yield value
