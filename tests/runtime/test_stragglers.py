"""Synchronous rounds on the simulated clock: who is dropped, who sends partial work, who is kept
with over-selection — checked against the pure oracle ``fedkit.sim.timing.round_timing``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedkit.experiment import scenario_link
from fedkit.runtime.server import RoundRecord, run, run_round
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.scenario.simulation import simulation, uplink_bound
from fedkit.sim.timing import Work, round_timing
from tests.conftest import tiny_raw

# fast: 8 steps x 8 samples x 3 / 1000 = 0.19 s; slow: 20 per s -> 1.2 s per step, 9.6 s in all
DEVICES = {
    "profiles": {
        "fast": {"compute": {"samples_per_s": 1000}, "up_mbps": 10, "down_mbps": 20, "latency_ms": 10},
        "slow": {"compute": {"samples_per_s": 20, "spread": 0.2}, "up_mbps": 10, "down_mbps": 20,
                 "latency_ms": 10},
    },
    "assign": {"fast": 0.5, "slow": 0.5},
}


def raw(**over: Any) -> dict[str, Any]:
    base = tiny_raw(rounds=2, devices=DEVICES, data__partition={"name": "iid"},
                    clients__per_round={"fraction": 1.0}, train={"steps": 8, "batch_size": 8, "lr": 0.1},
                    server={"deadline_s": 4.0})
    for k, v in over.items():
        base["server"][k] = v
    return base


def first_round(r: dict[str, Any]) -> tuple[Any, RoundRecord]:
    exp = build(validate(r))
    return exp, run_round(exp.plan, scenario_link(exp), exp.initial_state())[1]


def oracle(exp: Any, **kw: Any):
    s = exp.scenario
    sim = simulation(s)
    nbytes = uplink_bound(s, exp.init_params)  # identity: the model's float32 frame both ways
    work = {c: Work(8, 8, nbytes, nbytes) for c in sim.devices}
    return round_timing(sim.devices, work, s.seed, 1, deadline_s=s.server.deadline_s, **kw)


def outcomes(rec: RoundRecord) -> dict[str, tuple[str, float]]:
    return {r["client"]: (r["status"], r["time_s"]) for r in rec.clients}


def test_drop_keeps_who_finishes_by_the_deadline() -> None:
    exp, rec = first_round(raw(stragglers="drop"))
    want = oracle(exp)
    got = outcomes(rec)
    for o in want.outcomes:
        if o.reason == "ok":
            assert got[o.client] == ("ok", pytest.approx(o.at_s))
        else:
            assert got[o.client] == ("missed", 4.0)
    assert rec.clients_finished == 3 and rec.clients_dropped == 3 and rec.sim_time_s == 4.0


def test_partial_work_arrives_before_the_deadline_with_the_steps_that_fit() -> None:
    exp, rec = first_round(raw(stragglers="partial"))
    want = {o.client: o for o in oracle(exp, stragglers="partial").outcomes}
    assert {o.reason for o in want.values()} == {"ok", "partial"}
    for row in rec.clients:
        o = want[row["client"]]
        assert row["status"] == "ok" and row["time_s"] == pytest.approx(o.at_s) and row["time_s"] <= 4.0
        assert row["steps"] == o.steps and row["work"] == pytest.approx(o.steps / 8)
    assert rec.clients_finished == 6 and rec.clients_dropped == 0
    assert 0.5 < rec.metrics["work_fraction"] < 1.0
    assert rec.sim_time_s == pytest.approx(max(o.at_s for o in want.values()))


def test_over_selection_keeps_the_first_k_and_cancels_the_rest() -> None:
    r = raw(over_select=1.5, deadline_s=20.0)
    r["clients"]["per_round"] = {"count": 4}
    exp, rec = first_round(r)  # samples all 6, keeps the 4 first to finish
    assert rec.clients_sampled == 6 and rec.clients_finished == 4
    sim = simulation(exp.scenario)
    kept = [o.client for o in oracle(exp, keep=4).outcomes if o.reason in ("ok", "partial")]
    fast = sorted(c for c, d in sim.devices.items() if d.profile == "fast")
    slowest = sorted((d.samples_per_s, c) for c, d in sim.devices.items() if d.profile == "slow")
    assert set(kept) == set(fast) | {slowest[-1][1]}  # every fast one and the fastest slow one
    status = {c: s for c, (s, _) in outcomes(rec).items()}
    assert sorted(c for c, s in status.items() if s == "ok") == sorted(kept)
    assert sorted(status.values()).count("cancelled") == 2 and rec.clients_dropped == 0


def test_same_seed_same_times_and_params() -> None:
    def go(seed: int) -> tuple[list[np.ndarray], list[float]]:
        exp = build(validate({**raw(stragglers="partial"), "seed": seed}))
        recs: list[RoundRecord] = []
        st = run(exp.plan, scenario_link(exp), exp.initial_state(), lambda s, rec: recs.append(rec))
        return st.params, [r["time_s"] for rec in recs for r in rec.clients] + [recs[-1].sim_time_s]

    (p1, t1), (p2, t2), (_, t3) = go(3), go(3), go(4)
    assert t1 == t2 and all(np.array_equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert t1 != t3
    assert t1[-1] > 4.0 and math.isfinite(t1[-1])  # two rounds of simulated time


def test_without_devices_nothing_changes() -> None:
    exp = build(validate(tiny_raw()))
    assert exp.plan.work is None and simulation(exp.scenario) is None
    rec = run_round(exp.plan, scenario_link(exp), exp.initial_state())[1]
    assert rec.sim_time_s == 0.0 and rec.clients_dropped == 0 and "work_fraction" not in rec.metrics


def test_a_resumed_run_continues_the_simulated_clock(tmp_path) -> None:
    from fedkit.experiment import run_scenario

    r = {**raw(stragglers="partial"), "rounds": 3}
    full = run_scenario(validate(r), tmp_path / "full")
    run_scenario(validate({**r, "rounds": 1}), tmp_path / "part")
    part = run_scenario(validate(r), tmp_path / "part", resume=True)
    assert part["params_sha256"] == full["params_sha256"] and part["sim_time_s"] == full["sim_time_s"]


def test_expected_round_time_is_the_mean_slowest_of_k() -> None:
    from itertools import combinations

    from fedkit.scenario.simulation import expected_round_s

    times = [1.0, 5.0, 2.0, 9.0, 3.0]
    for k in (1, 2, 5):
        brute = [max(c) for c in combinations(times, k)]
        assert expected_round_s(times, k) == pytest.approx(sum(brute) / len(brute))
    assert expected_round_s(times, 5, deadline_s=4.0) == pytest.approx(4.0)
