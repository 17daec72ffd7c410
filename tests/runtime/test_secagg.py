"""Secure aggregation through the round engine: the exact sum of the quantised updates, what the
server holds, dropouts at every stage up to the threshold, clean aborts beyond it, weighting,
accuracy against plain FedAvg, acceptance of protocol replies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
import torch

from fedkit import rng as frng
from fedkit.runtime import secagg as rsa
from fedkit.runtime.accept import Rejected, accept
from fedkit.runtime.client import (
    DEFAULT_MODS,
    ClientHost,
    Mod,
    ModelCache,
    encode_uplink,
    secagg_mask,
)
from fedkit.runtime.server import RoundRecord, RunFailed, ServerState, run
from fedkit.runtime.task import SecAggField
from fedkit.scenario import validate
from fedkit.scenario.build import Experiment, build
from fedkit.secure import secagg as sa
from fedkit.secure.field import dequantize_sum, flatten
from fedkit.sim.link import InProcessLink
from fedkit.types import Encoded, Reply, Task, Update
from tests.conftest import tiny_raw

STAGE_KINDS = rsa.KINDS


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; run_scenario sets the same
    yield
    torch.set_num_threads(before)


def secagg_raw(n: int = 6, rounds: int = 1, **over: Any) -> dict[str, Any]:
    secagg = over.pop("secagg", {})
    return tiny_raw(rounds=rounds, clients={"count": n, "per_round": {"fraction": 1.0}},
                    privacy={"secagg": {"clip": 2.0, **secagg}}, **over)


class Recorder:
    """Client side: each client's field input and secret (a mod outside ``secagg_mask``).
    Server side: everything the policy sees and holds (a policy wrapper), and the protocol's
    field sum (a plan wrapper)."""

    def __init__(self) -> None:
        self.inputs: dict[tuple[int, str], np.ndarray] = {}
        self.secrets: dict[tuple[int, str], bytes] = {}
        self.seen: list[tuple[str, Any]] = []  # ("arrival", Arrival) / ("update", U) / ("state", S)
        self.totals: list[sa.Aggregate] = []

    def mod(self, state: Any, task: Task, ctx: Any, inner: Any) -> Any:
        state, reply = inner(state, task, ctx)
        if task.kind == rsa.ADVERTISE and state.secagg is not None:
            self.inputs[task.round, task.client] = state.secagg.input.copy()
            self.secrets[task.round, task.client] = state.secagg.protocol.secret
        return state, reply


def failing(at: Mapping[str, Collection[str]], exc: Callable[[str], BaseException] = RuntimeError) -> Mod:
    """A mod that makes the named clients fail on tasks of the given kinds (a dropout)."""

    def mod(state: Any, task: Task, ctx: Any, inner: Any) -> Any:
        if task.client in at.get(task.kind, ()):
            raise exc(f"{task.client} dies at {task.kind}")
        return inner(state, task, ctx)

    return mod


@dataclass(frozen=True)
class SpyPlan(rsa.SecAggPlan):
    totals: list[sa.Aggregate] = field(default_factory=list, compare=False)

    def combine(self, agg: sa.Aggregate, version: int, metrics: Mapping[str, float]) -> tuple[Update, Any]:
        self.totals.append(agg)
        return super().combine(agg, version, metrics)


@dataclass(frozen=True)
class SpyPolicy:
    inner: rsa.SecAggRound
    rec: Recorder

    def _keep(self, out: tuple[Any, list[Any]]) -> tuple[Any, list[Any]]:
        self.rec.seen.append(("state", out[0]))
        return out

    def start(self, view: Any, carried: Any = None) -> Any:
        return self._keep(self.inner.start(view))

    def on_arrival(self, view: Any, state: Any, arrival: Any, update: Any) -> Any:
        self.rec.seen += [("arrival", arrival), ("update", update)]
        return self._keep(self.inner.on_arrival(view, state, arrival, update))

    def on_deadline(self, view: Any, state: Any) -> Any:
        return self._keep(self.inner.on_deadline(view, state))


def engine(raw: dict[str, Any], fail: Mapping[str, Collection[str]] | None = None,
           ) -> tuple[Experiment, Recorder, dict[str, ClientHost], Any]:
    """The scenario's plan with recorders around the policy and clients that may fail."""
    exp = build(validate(raw))
    rec = Recorder()
    policy = exp.plan.policy
    assert isinstance(policy, rsa.SecAggRound)
    spy_plan = SpyPlan(**{k: getattr(policy.plan, k) for k in rsa.SecAggPlan.__dataclass_fields__},
                       totals=rec.totals)
    plan = replace(exp.plan, policy=SpyPolicy(replace(policy, plan=spy_plan), rec))
    models = ModelCache()
    mods = (failing(fail or {}), encode_uplink, rec.mod, secagg_mask)
    hosts = {c: ClientHost(s, models, mods=mods) for c, s in exp.clients.items()}
    return exp, rec, hosts, plan


def run_engine(raw: dict[str, Any], fail: Mapping[str, Collection[str]] | None = None,
               ) -> tuple[ServerState, list[RoundRecord], Recorder, dict[str, ClientHost]]:
    exp, rec, hosts, plan = engine(raw, fail)
    rows: list[RoundRecord] = []
    state = run(plan, InProcessLink(hosts), exp.initial_state(), lambda s, r: rows.append(r))
    return state, rows, rec, hosts


def plain_sum(rec: Recorder, rnd: int, who: Collection[str]) -> np.ndarray:
    return np.sum([rec.inputs[rnd, c].astype(np.uint64) for c in sorted(who)], axis=0)


def test_unmasked_sum_is_exactly_the_sum_of_the_quantised_updates() -> None:
    state, rows, rec, hosts = run_engine(secagg_raw(rounds=2))
    assert [r.status for r in rows] == ["ok", "ok"]
    assert len(rec.totals) == 2
    for rnd, agg in enumerate(rec.totals, start=1):
        assert agg.survivors == tuple(sorted(hosts))
        assert np.array_equal(agg.total.astype(np.uint64), plain_sum(rec, rnd, hosts))
    row = rows[0]
    assert row.clients_sampled == 6 and row.clients_finished == 6
    m = row.metrics
    assert m["secagg_survivors"] == 6 and m["secagg_degree"] == 5 and m["secagg_threshold"] == 3
    # every byte of the round is in exactly one stage; the masked inputs dominate the uplink
    ups = [m[f"secagg_bytes_up_{s}"] for s in rsa.STAGES]
    assert sum(ups) == row.bytes_up and max(ups) == m["secagg_bytes_up_masked"]
    dim = sum(p.size for p in state.params) + rsa.EXTRA
    assert m["secagg_bytes_up_masked"] > 6 * 4 * dim
    # per-client rows name each stage
    kinds = sorted({c["kind"] for c in row.clients})
    assert kinds == sorted(STAGE_KINDS) and all(c["status"] == "ok" for c in row.clients)
    # what the clients held is gone once the round is over
    assert all(h.state.secagg is None for h in hosts.values())


def test_the_server_never_holds_an_individual_update_or_a_secret() -> None:
    _, _, rec, _ = run_engine(secagg_raw())
    inputs = {c: x for (_, c), x in rec.inputs.items()}
    payloads: list[bytes] = []
    for what, v in rec.seen:
        if what == "arrival":
            payloads.append(v.task.params.data)  # what went down
            if v.reply is not None and v.reply.update is not None:
                payloads.append(v.reply.update.data)  # what came up
        elif what == "update" and v is not None:
            assert v.delta == [] and v.num_examples == 0  # accepted stage replies carry no update
    masked = [sa.decode_message(p) for p in payloads if p[:5] == b"FKSA\x05"]
    assert len(masked) == 6
    for msg in masked:
        x = inputs[msg.client]
        assert np.mean(msg.vector == x) < 0.01  # masked: equal to the input by chance only
    for p in payloads:
        for c, x in inputs.items():
            assert x.tobytes() not in p, c
            assert x[:-rsa.EXTRA].astype(np.float32).tobytes() not in p
        for secret in rec.secrets.values():
            assert secret not in p
    true_sum = plain_sum(rec, 1, inputs).astype(np.uint32)
    states = [v for what, v in rec.seen if what == "state"]
    held = [s.server.masked_sum for s in states if s is not None and s.server.masked_sum is not None]
    assert held  # the running sum of masked inputs is all it keeps of them...
    for total in held:
        assert not any(np.array_equal(total, x) for x in inputs.values())
        assert not np.array_equal(total, true_sum)  # ...and it is masked until the unmasking
    for s in states:
        fields = vars(s.server).values()
        assert not any(isinstance(f, np.ndarray) and f is not s.server.masked_sum for f in fields)


@pytest.mark.parametrize("stage", STAGE_KINDS)
def test_dropouts_up_to_the_threshold_at_each_stage_give_the_exact_sum(stage: str) -> None:
    gone = {"client-1", "client-4"}  # k = 5, t = 3: each client may lose two neighbours
    _, rows, rec, _ = run_engine(secagg_raw(), fail={stage: gone})
    assert rows[0].status == "ok", rows[0].status
    agg = rec.totals[0]
    everyone = {f"client-{i}" for i in range(6)}
    # dropped before the masked input: not in the sum; at unmasking: their input still counts
    want = everyone if stage == rsa.UNMASK else everyone - gone
    assert set(agg.survivors) == want
    assert np.array_equal(agg.total.astype(np.uint64), plain_sum(rec, 1, want))
    assert rows[0].clients_finished == len(want)
    failed = {c["client"] for c in rows[0].clients if c["status"] == "failed"}
    assert failed == gone


def test_dropouts_at_every_stage_of_one_round() -> None:
    fail = {k: {f"client-{i}"} for i, k in enumerate(STAGE_KINDS)}  # 10 clients: k = 9, t = 5
    _, rows, rec, _ = run_engine(secagg_raw(n=10), fail=fail)
    assert rows[0].status == "ok"
    want = {f"client-{i}" for i in range(10)} - {"client-0", "client-1", "client-2"}
    assert set(rec.totals[0].survivors) == want
    assert np.array_equal(rec.totals[0].total.astype(np.uint64), plain_sum(rec, 1, want))


@pytest.mark.parametrize(("stage", "where"), [
    (rsa.ADVERTISE, "advertise-keys"), (rsa.SHARE, "share-keys"),
    (rsa.MASKED, "masked-input"), (rsa.UNMASK, "unmask")])
def test_beyond_the_threshold_the_round_is_skipped_with_the_reason(
    stage: str, where: str, caplog: pytest.LogCaptureFixture,
) -> None:
    gone = {f"client-{i}" for i in (range(5) if stage == rsa.ADVERTISE else range(3))}
    exp, _, hosts, plan = engine(secagg_raw(rounds=2), fail={stage: gone})
    rows: list[RoundRecord] = []
    with caplog.at_level(logging.WARNING, "fedkit"), pytest.raises(RunFailed, match="no round"):
        run(plan, InProcessLink(hosts), exp.initial_state(), lambda s, r: rows.append(r))
    assert len(rows) == 2
    for r in rows:
        assert r.status.startswith(f"skipped: secagg round {r.round} aborted at stage {where!r}")
        assert r.clients_finished == 0 and r.metrics["secagg_bytes_up_advertise"] > 0
    assert f"aborted at stage {where!r}" in caplog.text
    assert all(h.state.secagg is None or h.state.secagg.round == 2 for h in hosts.values())


def test_a_client_left_out_forgets_its_secrets_at_its_next_task() -> None:
    exp, _, hosts, plan = engine(secagg_raw(), fail={rsa.MASKED: {"client-2"}})
    run(plan, InProcessLink(hosts), exp.initial_state())
    assert hosts["client-2"].state.secagg is not None  # it never heard the round ended
    task = Task(2, "client-2", "evaluate", Encoded("identity", b""), {}, task_id="t")
    hosts["client-2"](task)  # any task of a later round (this one even fails to parse)
    assert hosts["client-2"].state.secagg is None


def _field(weighting: str) -> SecAggField:
    return SecAggField(clip=4.0, levels=(2**32 - 1) // 3, weighting=weighting, max_weight=1000)  # type: ignore[arg-type]


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_the_combined_update_weights_like_fedavg_or_uniformly(weighting: str) -> None:
    f = _field(weighting)
    layout = (((3, 2), np.dtype(np.float32)), ((4,), np.dtype(np.float32)))
    plan = rsa.SecAggPlan(f, layout)
    counts = {"a": 10, "b": 300, "c": 45}
    deltas = {c: [frng.rng(1, "d", c).normal(0, 0.5, s).astype(np.float32) for s, _ in layout] for c in counts}
    xs = {c: rsa.field_input(f, deltas[c], n, frng.rng(1, "q", c)) for c, n in counts.items()}
    total = np.sum([x.astype(np.uint64) for x in xs.values()], axis=0).astype(np.uint32)
    update, extra = plan.combine(sa.Aggregate(1, total, tuple(counts), 2, 2), 0, {})
    w = {c: (n if weighting == "examples" else 1) for c, n in counts.items()}
    want = sum(w[c] * flatten(deltas[c]) for c in counts) / sum(w.values())
    got = flatten(update.delta)
    assert update.num_examples == sum(counts.values())
    assert extra == {"secagg_clipped": 0, "secagg_capped": 0}
    assert [d.shape for d in update.delta] == [(3, 2), (4,)]
    step = 2 * f.clip / f.levels
    assert np.max(np.abs(got - want)) < 3 * step * (f.max_weight / 10 if weighting == "examples" else 1)
    # the clipping range and the weight cap are counted, not silently applied
    big = [d * 100 for d in deltas["a"]]
    x_big = rsa.field_input(_field("uniform"), big, 2000, frng.rng(1, "q", "a"))
    assert x_big[-3:].tolist() == [1000, int(np.sum(np.abs(flatten(big)) > f.clip)), 1]
    assert 0 < x_big[-2] < x_big.size


def test_secagg_reaches_plain_fedavg_accuracy_within_the_quantisation_error() -> None:
    over = {"rounds": 3, "data": {"dataset": {"name": "digits"}, "partition": {"name": "dirichlet", "alpha": 0.5}}}
    plain = build(validate(tiny_raw(clients={"count": 6, "per_round": {"fraction": 1.0}}, **over)))
    rows: list[RoundRecord] = []
    a = run(plain.plan, InProcessLink({c: ClientHost(s) for c, s in plain.clients.items()}),
            plain.initial_state(), lambda s, r: rows.append(r))
    state, srows, _, _ = run_engine(secagg_raw(**over))
    gap = max(float(np.max(np.abs(x - y))) for x, y in zip(a.params, state.params, strict=True))
    assert 0 < gap < 1e-4  # not the same bits (quantised), the same model for every purpose
    for p, s in zip(rows, srows, strict=True):
        assert abs(p.metrics["test_acc"] - s.metrics["test_acc"]) <= 2 / 359 + 1e-12
        assert abs(p.metrics["test_loss"] - s.metrics["test_loss"]) < 1e-4
    assert srows[-1].metrics["test_acc"] > srows[0].metrics["test_acc"]


def test_protocol_replies_are_accepted_only_as_the_stage_s_message() -> None:
    exp = build(validate(secagg_raw()))
    rule = exp.plan.acceptance
    keys = sa.AdvertiseKeys(1, "client-0", b"a" * 32, b"b" * 32)

    def reply(kind: str, payload: Encoded | None, client: str = "client-0") -> tuple[Task, Reply]:
        task = Task(1, "client-0", kind, Encoded("identity", b""), {}, task_id="t")
        return task, Reply("t", client, 1, update=payload)

    assert accept(rule, *reply(rsa.ADVERTISE, rsa.wrap(keys))).delta == []
    bad = [
        (rsa.ADVERTISE, None, "carries no protocol message"),
        (rsa.ADVERTISE, Encoded("identity", b"x"), "not a secagg message"),
        (rsa.SHARE, rsa.wrap(keys), "expected ShareKeys, got AdvertiseKeys"),
        (rsa.ADVERTISE, rsa.wrap(replace(keys, client="client-1")), "names client 'client-1'"),
        (rsa.MASKED, rsa.wrap(sa.MaskedInput(1, "client-0", np.zeros(7, np.uint32))), "7 values"),
        (rsa.UNMASK, Encoded(rsa.CODEC, b"FKSA\x07\x01"), "malformed"),
    ]
    for kind, payload, why in bad:
        with pytest.raises(Rejected, match=why):
            accept(rule, *reply(kind, payload))


def test_local_dp_clips_and_noises_each_update_before_it_is_masked() -> None:
    """The default mods clip (and noise) before they mask: each client's field input is its
    delta clipped to ``clip_norm``; the rounds still close and report ε."""
    pytest.importorskip("dp_accounting")
    r = secagg_raw(n=4, rounds=2, secagg={"weighting": "uniform"})
    r["privacy"]["dp"] = {"mode": "local", "clip_norm": 0.05, "noise_multiplier": 1e-4}
    exp = build(validate(r))
    rec, models = Recorder(), ModelCache()
    hosts = {c: ClientHost(s, models, mods=(rec.mod, *DEFAULT_MODS)) for c, s in exp.clients.items()}
    rows: list[RoundRecord] = []
    run(exp.plan, InProcessLink(hosts), exp.initial_state(), lambda s, row: rows.append(row))
    assert [row.status for row in rows] == ["ok", "ok"]
    assert exp.plan.secagg is not None
    spec, d = rsa.field_spec(exp.plan.secagg.field), exp.plan.secagg.dim - rsa.EXTRA
    assert len(rec.inputs) == 8
    for x in rec.inputs.values():  # the training delta is far longer than 0.05: clipped to it
        assert 0.045 < np.linalg.norm(dequantize_sum(spec, x[:d], 1)) < 0.0505
    assert rows[1].metrics["dp_epsilon"] > rows[0].metrics["dp_epsilon"] > 0
    assert np.isnan(rows[0].metrics["train_loss"])  # local DP: no client sent its training loss
