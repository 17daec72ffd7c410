"""A hung client that misses deadline after deadline stops being sampled, with a warning, and
comes back as soon as it answers."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fedkit.experiment import inprocess_link
from fedkit.runtime.server import Benched, run
from fedkit.scenario import validate
from fedkit.scenario.build import build
from tests.conftest import tiny_raw


def test_benched_backs_off_and_clears_on_an_answer() -> None:
    b = Benched()
    for rnd in (1, 2):
        b = b.missed("c1", rnd, after=3)
    assert b.available(["c0", "c1"], 3) == ("c0", "c1")  # two misses: still asked
    b = b.missed("c1", 3, after=3)
    assert b.available(["c0", "c1"], 4) == ("c0",)  # sits out round 4
    assert b.available(["c0", "c1"], 5) == ("c0", "c1")  # asked again in round 5
    b = b.missed("c1", 5, after=3)
    assert b.until["c1"] == 8  # then 2 rounds out, 4, ... (capped at 64)
    assert b.answered("c1").available(["c0", "c1"], 6) == ("c0", "c1")


def test_a_hung_client_is_not_sampled_round_after_round(caplog: pytest.LogCaptureFixture) -> None:
    raw = tiny_raw(rounds=6, clients={"count": 4, "per_round": {"fraction": 1.0}})
    raw["server"] = {"deadline_s": 10.0}
    exp = build(validate(raw))
    hung = sorted(exp.clients)[0]
    plan = dataclasses.replace(exp.plan, bench_after=2)
    link = inprocess_link(exp.clients, cost=lambda t, r, now: float("inf") if t.client == hung else 1.0)
    rows: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="fedkit.server"):
        run(plan, link, exp.initial_state(), lambda st, rec: rows.extend(rec.clients))
    asked = [r["round"] for r in rows if r["client"] == hung]
    assert asked == [1, 2, 4]  # missed 1 and 2, sat out 3, missed 4, sits out 5 and 6
    assert f"client {hung} missed 2 deadlines in a row: not sampled before round 4" in caplog.text
