"""Asynchronous policies through the round engine, with numpy clients of known speed: staleness
bookkeeping, FedAsync mixing, FedBuff's flush at K, FedCompass's groups and per-client steps,
timeouts, refusing stale updates, and FedAU's weights under a participation pattern."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from fedkit.aggregation import make_aggregator
from fedkit.aggregation.async_strategies import make_step
from fedkit.aggregation.fedasync import FedAsync
from fedkit.aggregation.fedau import estimates
from fedkit.aggregation.fedbuff import FedBuff
from fedkit.aggregation.fedcompass import Compass
from fedkit.aggregation.server_opt import sgd
from fedkit.aggregation.staleness import constant, hinge, polynomial
from fedkit.compression import make
from fedkit.models.train import TrainConfig
from fedkit.runtime.accept import Acceptance
from fedkit.runtime.async_policy import Buffered, CompassPolicy
from fedkit.runtime.policy import Sampling, SyncRound
from fedkit.runtime.server import Plan, RoundRecord, ServerState, run
from fedkit.runtime.task import ModelRef
from fedkit.scenario.participation import Participation, presence
from fedkit.sim.link import InProcessLink
from fedkit.types import Reply, Task

X0 = [np.zeros(1, np.float32)]
ENC = make("identity")


def client(name: str, value: float) -> Callable[[Task], Reply]:
    """Always sends the delta ``value`` and reports the local steps it was asked."""

    def fn(task: Task) -> Reply:
        steps = task.config.train.steps or 1
        update = ENC.encode(None, [np.full(1, value, np.float32)])[1]
        return Reply(task.task_id, name, task.round, 10, update,
                     metrics={"steps": float(steps), "train_loss": 0.0}, version=task.version)

    return fn


def setup(policy, aggregator, rounds: int, values: dict[str, float], seconds: dict[str, float],
          max_staleness: int | None = None, present=None) -> tuple[Plan, InProcessLink]:
    """``seconds``: each client's simulated seconds per local step (``inf``: never answers)."""
    plan = Plan(seed=0, rounds=rounds, aggregator=aggregator,
                model=ModelRef(spec={"name": "mlp"}, input_shape=(1,), num_classes=2),
                train=lambda rnd: TrainConfig(steps=1), policy=policy,
                acceptance=Acceptance.for_params(X0, max_staleness=max_staleness),
                sampling=Sampling(0, fraction=1.0))
    cost = lambda t, r, _sent: seconds[t.client] * t.config.train.steps  # noqa: E731
    link = InProcessLink({c: client(c, v) for c, v in values.items()}, cost, present=present)
    return plan, link


def go(plan: Plan, link: InProcessLink) -> tuple[ServerState, list[RoundRecord]]:
    recs: list[RoundRecord] = []
    state = run(plan, link, ServerState(0, X0, plan.aggregator.init(X0)), lambda s, r: recs.append(r))
    return state, recs


def ok(rec: RoundRecord) -> list[tuple[str, float, int]]:
    """(client, time, staleness) of the round's accepted arrivals."""
    return [(r["client"], r["time_s"], r.get("staleness", 0)) for r in rec.clients if r["status"] == "ok"]


@pytest.mark.parametrize(
    ("fn", "s1", "s2"),
    [(constant(), 1.0, 1.0), (polynomial(0.5), 2**-0.5, 3**-0.5), (hinge(10, 1), 1.0, 1 / 11)],
    ids=["constant", "polynomial", "hinge"],
)
def test_fedasync_staleness_bookkeeping_and_mixing(fn, s1: float, s2: float) -> None:
    """a takes 1 s, b 3 s. t=1: a (fresh); t=2: a (fresh); t=3: b, sent at version 0 and now
    two versions old, then a, sent at version 2 and now one version old."""
    plan, link = setup(Buffered(k=1), make_step(FedAsync(0.5, fn)), 4, {"a": 1.0, "b": 10.0},
                       {"a": 1.0, "b": 3.0})
    state, recs = go(plan, link)
    assert [ok(r) for r in recs] == [[("a", 1.0, 0)], [("a", 2.0, 0)], [("b", 3.0, 2)], [("a", 3.0, 1)]]
    assert [r.clients_finished for r in recs] == [1, 1, 1, 1] and state.version == 4
    assert state.params[0][0] == pytest.approx(0.5 * (1 + 1 + s2 * 10 + s1 * 1))
    assert [r.sim_time_s for r in recs] == [1.0, 2.0, 3.0, 3.0]
    assert [r.get("sent_round") for r in recs[2].clients] == [1]  # sent in round 1, settled in 3


def test_tasks_of_earlier_rounds_settle_into_the_current_one() -> None:
    plan, link = setup(Buffered(k=1), make_step(FedAsync(0.5, constant())), 3,
                       {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 2.5})
    _, recs = go(plan, link)
    late = [r for rec in recs for r in rec.clients if r["client"] == "b"]
    assert late == [{**late[0], "round": 3, "sent_round": 1, "staleness": 2, "time_s": 2.5}]
    assert all(r.clients_sampled == 1 for r in recs[1:]) and recs[0].clients_sampled == 3


def test_fedbuff_flushes_at_k_with_hand_computed_steps() -> None:
    """a 1 s, b 2 s, c 3 s, K = 2: t=1 a; t=2 b (sent first) -> flush {a, b}; then a (sent at
    version 0 in round 1: 1 stale); t=3 c (1 stale) -> flush {a, c}."""
    fb = FedBuff(k=2, server_opt=sgd(lr=0.5))
    plan, link = setup(Buffered(k=2), make_step(fb), 2, {"a": 1.0, "b": 3.0, "c": 5.0},
                       {"a": 1.0, "b": 2.0, "c": 3.0})
    state, recs = go(plan, link)
    assert [ok(r) for r in recs] == [[("a", 1.0, 0), ("b", 2.0, 0)], [("a", 2.0, 1), ("c", 3.0, 1)]]
    assert [r.clients_finished for r in recs] == [2, 2]
    s = 2**-0.5
    assert state.params[0][0] == pytest.approx(0.5 * (1 + 3) / 2 + 0.5 * (s * 1 + s * 5) / 2, rel=1e-6)


def test_concurrency_keeps_that_many_clients_busy_with_seeded_picks() -> None:
    values = {f"c{i}": float(i) for i in range(8)}
    seconds = {c: 1.0 + i / 10 for i, c in enumerate(values)}
    runs = []
    for _ in range(2):
        plan, link = setup(Buffered(k=3, concurrency=3), make_step(FedBuff(k=3)), 5, values, seconds)
        state, recs = go(plan, link)
        runs.append((state.params[0].tobytes(), [ok(r) for r in recs]))
        busy = [r for rec in recs for r in rec.clients]
        # 3 at the start, then one for each arrival: never more than 3 in flight
        assert [r.clients_sampled for r in recs] == [6, 3, 3, 3, 3]
        assert all(r.clients_finished == 3 for r in recs)
        assert len({r["client"] for r in busy}) > 3  # idle clients are drawn, not always the same
    assert runs[0] == runs[1]


def test_a_silent_client_times_out_and_another_is_picked() -> None:
    plan, link = setup(Buffered(k=1, concurrency=1, timeout_s=5.0), make_step(FedAsync(1.0, constant())),
                       3, {"a": 1.0, "b": 2.0}, {"a": math.inf, "b": 1.0})
    state, recs = go(plan, link)
    rows = [(r["client"], r["status"], r["time_s"]) for rec in recs for r in rec.clients]
    # a (drawn first) never answers: dropped at t=5, then b is drawn and answers each second
    assert rows == [("a", "missed", 5.0), ("b", "ok", 6.0), ("b", "ok", 7.0), ("b", "ok", 8.0)]
    assert recs[0].clients_dropped == 1 and state.params[0][0] == pytest.approx(6.0)


def test_updates_staler_than_max_staleness_are_refused() -> None:
    plan, link = setup(Buffered(k=1), make_step(FedAsync(1.0, constant())), 8, {"a": 1.0, "b": 100.0},
                       {"a": 1.0, "b": 6.5}, max_staleness=3)
    state, recs = go(plan, link)
    b = [r for rec in recs for r in rec.clients if r["client"] == "b"]
    assert b[0]["status"] == "rejected" and "6 versions stale (max_staleness=3)" in b[0]["reason"]
    assert state.params[0][0] == pytest.approx(8.0)  # only a's updates


def test_compass_assigns_steps_so_similar_clients_arrive_together() -> None:
    """Seconds per step: a 1, b 1.1, c 2. First tasks (8 steps) aggregate alone; at t=8 a opens
    group 0 with 8 steps (due at 16); b (t=8.8) joins it with floor((16 - 8.8) / 1.1) = 6;
    c (t=16) cannot join and opens group 1 with floor((20 + 8 - 16) / 2) = 6 steps; a then
    completes group 0, which aggregates {b, a} together."""
    cp = Compass(min_steps=2, max_steps=8, num_clients=3)
    plan, link = setup(CompassPolicy(cp), make_step(cp), 4, {"a": 1.0, "b": 2.0, "c": 4.0},
                       {"a": 1.0, "b": 1.1, "c": 2.0})
    sent: list[tuple[str, int]] = []
    inner = link.send
    link.send = lambda tasks: (sent.extend((t.client, t.config.train.steps) for t in tasks), inner(tasks))
    state, recs = go(plan, link)
    assert sent[:3] == [("a", 8), ("b", 8), ("c", 8)]
    assert sent[3:6] == [("a", 8), ("b", 6), ("c", 6)]
    # b arrives on time at 15.4 and waits in its group's buffer until a completes it
    assert [[c for c, _, _ in ok(r)] for r in recs] == [["a"], ["b"], ["b", "c"], ["a"]]
    assert [r.clients_finished for r in recs] == [1, 1, 1, 2]
    assert [r.sim_time_s for r in recs] == [8.0, pytest.approx(8.8), 16.0, 16.0]
    # x = sum alpha s(tau) / N delta: first tasks 0, 1, 2 versions stale; in the group b (sent
    # at version 2) is 1 stale, a (sent at version 1) 2
    expect = [(1.0, 0), (2.0, 1), (4.0, 2), (2.0, 1), (1.0, 2)]
    assert state.params[0][0] == pytest.approx(sum(0.9 * (1 + t) ** -0.5 / 3 * v for v, t in expect), rel=1e-6)


def test_fedau_weights_track_inverse_participation_through_the_engine() -> None:
    probs = [0.9, 0.5, 0.25, 0.1]
    names = [f"c{i}" for i in range(4)]
    spec = Participation(kind="bernoulli", probs=probs)
    present = presence(spec, 7, {c: np.zeros(1, np.int64) for c in names})
    agg = make_aggregator("fedau", num_clients=4)
    plan, link = setup(SyncRound(), agg, 600, dict.fromkeys(names, 1.0), dict.fromkeys(names, 1.0),
                       present=present)
    state, recs = go(plan, link)
    est = estimates({k[len("reweight."):]: v for k, v in state.agg_state.items() if k.startswith("reweight.")})
    for c, p in zip(names, probs, strict=True):
        assert est[c] == pytest.approx(1 / p, rel=0.25)
    answered = [sum(r["status"] == "ok" for rec in recs for r in rec.clients if r["client"] == c) for c in names]
    assert answered[0] > answered[1] > answered[2] > answered[3] > 30
    skipped = [r for r in recs if r.status != "ok"]
    assert all(r.clients_finished == 0 for r in skipped)  # a round nobody answered still ticks


def test_a_compass_group_timer_leaves_the_late_member_in_flight() -> None:
    """b's first task takes 1.2 s/step, later ones 5 s/step. Group 0 (a: 10 steps due at 20,
    b: 6 steps) times out at 10 + 1.5 x 10 = 25 with only a; b's task is not cancelled: it
    arrives late at 12 + 30 = 42 and is aggregated with a's next group (at 45)."""
    cp = Compass(min_steps=2, max_steps=10, num_clients=2)
    plan, link = setup(CompassPolicy(cp), make_step(cp), 5, {"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 1.2})
    tasks_of_b: list[int] = []

    def cost(t: Task, r: Reply, sent: float) -> float:
        if t.client == "b":
            tasks_of_b.append(t.config.train.steps)
            return (1.2 if len(tasks_of_b) == 1 else 5.0) * t.config.train.steps
        return 1.0 * t.config.train.steps

    link._cost = cost
    state, recs = go(plan, link)
    assert [(r.sim_time_s, r.clients_finished) for r in recs] == [
        (10.0, 1), (12.0, 1), (25.0, 1), (35.0, 1), (45.0, 2)]
    b = [(r["status"], r["time_s"], r.get("staleness")) for rec in recs for r in rec.clients if r["client"] == "b"]
    assert b == [("ok", 12.0, 1), ("ok", 42.0, 2)] and tasks_of_b[:2] == [10, 6]
    assert all(r["status"] == "ok" for rec in recs for r in rec.clients)  # nothing was cancelled
