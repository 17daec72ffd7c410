"""The round engine: determinism, FedProx(mu=0) == FedAvg, bad replies, too few replies."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from fedkit.compression import make
from fedkit.experiment import inprocess_link
from fedkit.runtime.accept import Acceptance, Rejected, accept
from fedkit.runtime.policy import sample_clients
from fedkit.runtime.server import run, run_round
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.sim.link import InProcessLink
from fedkit.types import Encoded, Reply, Task
from tests.conftest import tiny_raw


def _final(raw: dict) -> list[np.ndarray]:
    exp = build(validate(raw))
    return run(exp.plan, inprocess_link(exp.clients), exp.initial_state()).params


def test_same_seed_same_params_different_seed_different() -> None:
    a, b = _final(tiny_raw()), _final(tiny_raw())
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = _final(tiny_raw(seed=4))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_fedprox_mu_zero_is_exactly_fedavg() -> None:
    a = _final(tiny_raw())
    b = _final(tiny_raw(strategy={"name": "fedprox", "mu": 0.0}))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = _final(tiny_raw(strategy={"name": "fedprox", "mu": 1.0}))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_sampling_is_seeded_and_sized() -> None:
    exp = build(validate(tiny_raw(clients__per_round={"fraction": 0.5, "min": 2})))
    ids = list(exp.clients)
    s1 = sample_clients(exp.plan.sampler, ids, 1)
    assert len(s1) == 3 and s1 == sorted(s1) and s1 == sample_clients(exp.plan.sampler, ids, 1)
    assert any(sample_clients(exp.plan.sampler, ids, r) != s1 for r in range(2, 8))


class _Faulty:
    """A link whose chosen clients send bad replies (or none)."""

    def __init__(self, inner, bad: dict[str, str]):
        self.inner, self.bad = inner, bad

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def arrivals(self, until):
        for a in self.inner.arrivals(until):
            r, kind = a.reply, self.bad.get(a.task.client)
            ident = make("identity")
            if kind == "nan":
                d = [np.full_like(x, np.nan) for x in ident.decode(r.update)]
                r = replace(r, update=ident.encode(None, d)[1])
            elif kind == "count":
                r = replace(r, update=ident.encode(None, [np.zeros(3, np.float32)])[1])
            elif kind == "shape":
                d = [np.zeros(x.shape[::-1] + (1,), x.dtype) for x in ident.decode(r.update)]
                r = replace(r, update=ident.encode(None, d)[1])
            elif kind == "garbage":
                r = replace(r, update=Encoded("identity", b"\x01\x02"))
            elif kind == "drop":
                r = None
            yield replace(a, reply=r, reason="dropped" if r is None else "")


def test_bad_updates_are_rejected_and_the_round_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    exp = build(validate(tiny_raw(clients__per_round={"fraction": 1.0})))
    ids = list(exp.clients)
    bad = {ids[0]: "nan", ids[1]: "shape", ids[2]: "garbage", ids[3]: "drop", ids[4]: "count"}
    link = _Faulty(inprocess_link(exp.clients), bad)
    state, rec = run_round(exp.plan, link, exp.initial_state())
    assert rec.clients_sampled == 6 and rec.clients_finished == 1 and rec.status == "ok"
    assert all(np.isfinite(p).all() for p in state.params)
    text = caplog.text
    assert "client-0: tensor 0: contains NaN or Inf" in text
    assert "client-1: malformed update: tensor frame: tensor 0 declared as (64, 16, 1)" in text
    assert "client-2: malformed update" in text
    assert "client-4: malformed update: tensor frame: payload declares 1 tensors, the model has 4" in text
    status = {r["client"]: r["status"] for r in rec.clients}
    assert status == {ids[0]: "rejected", ids[1]: "rejected", ids[2]: "rejected", ids[3]: "lost",
                      ids[4]: "rejected", ids[5]: "ok"}


def test_too_few_replies_skips_the_round_and_keeps_params() -> None:
    exp = build(validate(tiny_raw(server={"min_replies": 4}, clients__per_round={"count": 4})))
    ids = list(exp.clients)
    link = _Faulty(inprocess_link(exp.clients), {c: "drop" for c in ids[:3]})
    init = exp.initial_state()
    state, rec = run_round(exp.plan, link, init)
    assert rec.status.startswith("skipped") and state.round == 1 and state.version == 0
    assert all(np.array_equal(a, b) for a, b in zip(state.params, init.params, strict=True))


def test_retry_keeps_what_arrived_and_asks_only_new_clients() -> None:
    """Regression: a retry used to throw the first attempt's good replies away although those
    clients' error-feedback memory had already moved as if the server had used them."""
    raw = tiny_raw(server={"min_replies": 2, "on_too_few": "retry", "max_retries": 5},
                   clients__per_round={"count": 2}, compression={"uplink": "ef:topk(ratio=0.1)"})
    exp = build(validate(raw))
    first = sample_clients(exp.plan.sampler, list(exp.clients), 1, attempt=0)
    link = _Faulty(inprocess_link(exp.clients), {first[0]: "drop"})
    state, rec = run_round(exp.plan, link, exp.initial_state())
    assert rec.status == "ok" and rec.clients_finished == 2 and rec.clients_sampled == 3
    asked = [r["client"] for r in rec.clients]
    assert len(asked) == len(set(asked)) == 3  # nobody trains twice in a round
    assert {r["client"] for r in rec.clients if r["status"] == "ok"} >= {first[1]}


def test_acceptance_names_the_problem() -> None:
    params = [np.zeros((2, 2), np.float32)]
    rule = Acceptance.for_params(params, max_staleness=1)
    enc = make("identity").encode(None, [np.zeros((2, 2), np.float64)])[1]
    task = Task(1, "c", "train", enc, task_id="t", version=3)
    ok = Reply("t", "c", 1, 5, make("identity").encode(None, params)[1], version=3)
    assert accept(rule, task, ok, version=4).num_examples == 5
    cases = {
        r"declared as \(2, 2\) float64, the model has \(2, 2\) float32": replace(ok, update=enc),
        "num_examples": replace(ok, num_examples=0),
        "model version 2, the task sent 3": replace(ok, version=2),
        "names task 'u'": replace(ok, task_id="u"),
        "client failed: boom": replace(ok, error="boom"),
        "metric 'x' is not a finite number": replace(ok, metrics={"x": float("nan")}),
    }
    for msg, reply in cases.items():
        with pytest.raises(Rejected, match=msg):
            accept(rule, task, reply)
    with pytest.raises(Rejected, match="2 versions stale"):
        accept(rule, task, ok, version=5)


def test_a_slow_inprocess_client_misses_the_deadline_in_simulated_time() -> None:
    exp = build(validate(tiny_raw(clients__per_round={"fraction": 1.0}, server={"deadline_s": 600})))
    slow = "client-2"
    cost = lambda task, reply, _sent: 1000.0 if task.client == slow else 5.0 * int(task.client[-1])  # noqa: E731
    link = inprocess_link(exp.clients, cost)
    state, rec = run_round(exp.plan, link, exp.initial_state())
    status = {r["client"]: r["status"] for r in rec.clients}
    assert status.pop(slow) == "missed" and set(status.values()) == {"ok"}
    assert rec.clients_finished == 5 and rec.sim_time_s == 600.0
    times = [r["time_s"] for r in rec.clients if r["status"] == "ok"]
    assert times == sorted(times) == [0.0, 5.0, 15.0, 20.0, 25.0]  # completion order
    state, rec = run_round(exp.plan, link, state)  # the next round starts at t=600
    assert rec.sim_time_s == 1200.0 and rec.clients_finished == 5


def test_inprocess_link_delivers_in_completion_order_with_stable_ties() -> None:
    replies = {}

    def client(name: str):
        def fn(task: Task) -> Reply:
            replies[task.task_id] = Reply(task.task_id, name, task.round)
            return replies[task.task_id]
        return fn

    delays = {"a": 3.0, "b": 1.0, "c": 3.0, "d": math.inf}
    link = InProcessLink({n: client(n) for n in delays}, lambda t, r, _sent: delays[t.client])
    enc = Encoded("identity", b"")
    link.send([Task(1, n, "train", enc, task_id=n) for n in "abcd"])
    got = [(a.task.client, a.time) for a in link.arrivals(until=10.0)]
    assert got == [("b", 1.0), ("a", 3.0), ("c", 3.0)] and link.now() == 10.0
    link.cancel(["d"])
    assert list(link.arrivals(None)) == []
