"""The round engine: determinism, FedProx(mu=0) == FedAvg, bad replies, too few replies."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.compression import make
from fedkit.experiment import inprocess_link
from fedkit.runtime.server import check_update, run, run_round, sample_clients
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.types import Encoded, Reply
from tests.conftest import tiny_raw


def _final(raw: dict) -> list[np.ndarray]:
    exp = build(validate(raw))
    return run(exp.plan, inprocess_link(exp), exp.initial_state()).params


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
    s1 = sample_clients(exp.plan, ids, 1)
    assert len(s1) == 3 and s1 == sorted(s1) and s1 == sample_clients(exp.plan, ids, 1)
    assert any(sample_clients(exp.plan, ids, r) != s1 for r in range(2, 8))


class _Faulty:
    """A link whose chosen clients send bad replies."""

    def __init__(self, inner, bad: dict[str, str]):
        self.inner, self.bad = inner, bad

    def clients(self):
        return self.inner.clients()

    def exchange(self, tasks, deadline_s):
        out = []
        for r in self.inner.exchange(tasks, deadline_s):
            kind = self.bad.get(r.client)
            if kind == "nan":
                d = [np.full_like(a, np.nan) for a in make("identity").decode(r.update)]
                r = Reply(r.task_id, r.client, r.round, r.num_examples, make("identity").encode(None, d)[1])
            elif kind == "count":
                one = [np.zeros(3, np.float32)]
                r = Reply(r.task_id, r.client, r.round, r.num_examples, make("identity").encode(None, one)[1])
            elif kind == "shape":
                d = [np.zeros(a.shape[::-1] + (1,), a.dtype) for a in make("identity").decode(r.update)]
                r = Reply(r.task_id, r.client, r.round, r.num_examples, make("identity").encode(None, d)[1])
            elif kind == "garbage":
                r = Reply(r.task_id, r.client, r.round, r.num_examples, Encoded("identity", b"\x01\x02"))
            elif kind == "drop":
                continue
            out.append(r)
        return out

    def wire_bytes(self):
        return None

    def close(self):
        pass


def test_bad_updates_are_rejected_and_the_round_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    exp = build(validate(tiny_raw(clients__per_round={"fraction": 1.0})))
    ids = list(exp.clients)
    bad = {ids[0]: "nan", ids[1]: "shape", ids[2]: "garbage", ids[3]: "drop", ids[4]: "count"}
    link = _Faulty(inprocess_link(exp), bad)
    state, rec = run_round(exp.plan, link, exp.initial_state())
    assert rec.clients_sampled == 6 and rec.clients_finished == 1 and rec.status == "ok"
    assert all(np.isfinite(p).all() for p in state.params)
    text = caplog.text
    assert "client-0: tensor 0: contains NaN or Inf" in text
    assert "client-1: tensor 0: shape" in text
    assert "client-2: malformed update" in text
    assert "client-4: update has 1 tensors, the model has 4" in text


def test_too_few_replies_skips_the_round_and_keeps_params() -> None:
    exp = build(validate(tiny_raw(server={"min_replies": 4}, clients__per_round={"count": 4})))
    ids = list(exp.clients)
    link = _Faulty(inprocess_link(exp), {c: "drop" for c in ids[:3]})
    init = exp.initial_state()
    state, rec = run_round(exp.plan, link, init)
    assert rec.status.startswith("skipped") and state.round == 1
    assert all(np.array_equal(a, b) for a, b in zip(state.params, init.params, strict=True))


def test_retry_resamples_until_enough_replied() -> None:
    raw = tiny_raw(server={"min_replies": 2, "on_too_few": "retry", "max_retries": 5}, clients__per_round={"count": 2})
    exp = build(validate(raw))
    first = sample_clients(exp.plan, list(exp.clients), 1, attempt=0)
    link = _Faulty(inprocess_link(exp), {first[0]: "drop"})
    state, rec = run_round(exp.plan, link, exp.initial_state())
    assert rec.status == "ok" and rec.clients_finished == 2 and rec.clients_sampled > 2


def test_check_update_names_the_problem() -> None:
    params = [np.zeros((2, 2), np.float32)]
    enc = make("identity").encode(None, [np.zeros((2, 2), np.float64)])[1]
    with pytest.raises(ValueError, match="dtype float64, expected float32"):
        check_update(params, Reply("t", "c", 1, 5, enc))
    with pytest.raises(ValueError, match="num_examples"):
        check_update(params, Reply("t", "c", 1, 0, enc))
