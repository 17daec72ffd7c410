"""Scenario sections for async strategies and participation: what builds, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedkit.aggregation.async_strategies import CompassStep, FedAsyncStep, FedBuffStep
from fedkit.experiment import run_scenario
from fedkit.runtime.async_policy import Buffered, CompassPolicy
from fedkit.scenario import ScenarioError, dump, validate
from fedkit.scenario.build import build_server
from fedkit.scenario.participation import Participation, pattern, probabilities
from fedkit.sim.participation import Bernoulli, Cyclic, MarkovPattern
from tests.conftest import tiny_raw


def _async(strategy: dict, **over) -> dict:
    raw = tiny_raw(strategy=strategy, **over)
    del raw["clients"]["per_round"]
    return raw


def test_async_strategies_build_their_policy_and_step() -> None:
    plan, _ = build_server(validate(_async({"name": "fedbuff", "k": 4, "concurrency": 5},
                                           server={"deadline_s": 30, "max_staleness": 8})))
    assert plan.policy == Buffered(k=4, concurrency=5, timeout_s=30.0)
    assert isinstance(plan.aggregator, FedBuffStep) and plan.aggregator.fedbuff.k == 4
    assert plan.acceptance.max_staleness == 8
    plan, _ = build_server(validate(_async({"name": "fedasync", "alpha": 0.6, "staleness": "hinge"})))
    assert plan.policy == Buffered(k=1, timeout_s=600.0) and isinstance(plan.aggregator, FedAsyncStep)
    plan, _ = build_server(validate(_async({"name": "fedcompass", "min_steps": 2, "max_steps": 9})))
    assert isinstance(plan.policy, CompassPolicy) and isinstance(plan.aggregator, CompassStep)
    assert plan.policy.compass.num_clients == 6  # N defaults to clients.count


@pytest.mark.parametrize(
    ("over", "bad"),
    [
        ({"clients__per_round": {"count": 2}}, "clients.per_round (use strategy.concurrency)"),
        ({"server": {"min_replies": 2}}, "server.min_replies"),
        ({"server": {"stragglers": "partial"}, "devices": {"profiles": {
            "p": {"compute": {"samples_per_s": 10}, "up_mbps": 1, "down_mbps": 1}}}}, "server.stragglers"),
        ({"evaluation": {"federated": True}}, "evaluation.federated"),
        ({"compression": {"downlink": "fp16", "downlink_mode": "delta"}}, "compression.downlink_mode: delta"),
        ({"participation": {"kind": "bernoulli", "probs": 0.5}}, "participation"),
    ],
)
def test_sync_only_settings_are_refused_with_async(over: dict, bad: str) -> None:
    raw = _async({"name": "fedbuff", "k": 2})
    for key, value in over.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    msg = "strategy 'fedbuff' is asynchronous; these settings are for synchronous rounds only: "
    with pytest.raises(ScenarioError) as e:
        validate(raw)
    assert msg + bad in str(e.value)


@pytest.mark.parametrize(
    ("strategy", "msg"),
    [
        ({"name": "fedbuff", "kk": 3}, "no parameter 'kk'; did you mean 'k'"),
        ({"name": "fedasync", "k": 3}, "no parameter 'k'"),
        ({"name": "fedcompass", "concurrency": 3}, "no parameter 'concurrency'"),
        ({"name": "fedbuff", "concurrency": 9}, "strategy.concurrency=9 exceeds clients.count=6"),
        ({"name": "fedasync", "staleness": "exp"}, "unknown staleness function 'exp'"),
    ],
)
def test_bad_async_parameters_name_the_problem(strategy: dict, msg: str) -> None:
    with pytest.raises(ScenarioError, match=msg):
        validate(_async(strategy))


def test_participation_section_builds_each_pattern() -> None:
    labels = {f"c{i}": np.array([i % 3, 0, 1]) for i in range(4)}
    spec = Participation(kind="markov", probs=[0.5, 0.2, 0.1, 1.0], to_active=0.1)
    assert probabilities(spec, 0, labels) == {"c0": 0.5, "c1": 0.2, "c2": 0.1, "c3": 1.0}
    assert isinstance(pattern(spec, probabilities(spec, 0, labels)), MarkovPattern)
    cyc = Participation(kind="cyclic", probs=0.3, cycle=5)
    assert pattern(cyc, probabilities(cyc, 0, labels)) == Cyclic(dict.fromkeys(labels, 0.3), 5)
    dir_ = Participation(kind="bernoulli", probs={"kind": "dirichlet", "alpha": 0.5, "mean": 0.2})
    p = probabilities(dir_, 3, labels)
    assert isinstance(pattern(dir_, p), Bernoulli) and all(0.02 <= v <= 1 for v in p.values())
    assert p == probabilities(dir_, 3, labels) != probabilities(dir_, 4, labels)


@pytest.mark.parametrize(
    ("section", "msg"),
    [
        ({"kind": "bernoulli", "probs": 0.5, "to_active": 0.1}, "to_active is for kind: markov"),
        ({"kind": "markov", "probs": 0.5, "cycle": 4}, "cycle is for kind: cyclic"),
        ({"kind": "bernoulli", "probs": [0.5, 1.5, 0.2, 0.1, 0.1, 0.1]}, r"must be in \(0, 1\]"),
        ({"kind": "bernoulli", "probs": [0.5, 0.5]}, "participation.probs has 2 entries, clients.count is 6"),
        ({"kind": "sometimes", "probs": 0.5}, "participation.kind"),
    ],
)
def test_bad_participation_is_refused(section: dict, msg: str) -> None:
    with pytest.raises(ScenarioError, match=msg):
        validate(tiny_raw(participation=section))


def test_participation_decides_who_answers_and_refuses_processes_mode(tmp_path: Path) -> None:
    raw = tiny_raw(rounds=4, clients__per_round={"fraction": 1.0},
                   participation={"kind": "bernoulli", "probs": [1.0, 1.0, 0.3, 0.3, 0.05, 0.05]},
                   strategy={"name": "fedau", "num_clients": 6})
    s = validate(raw)
    run_scenario(s, tmp_path / "run")
    rows = _jsonl(tmp_path / "run" / "clients.jsonl")
    answered = {c: sum(r["status"] == "ok" for r in rows if r["client"] == c) for c in {r["client"] for r in rows}}
    assert answered["client-0"] == answered["client-1"] == 4 and answered["client-4"] < 4
    assert {r["status"] for r in rows} == {"ok", "missed"}
    with pytest.raises(ValueError, match="simulated in-process only"):
        run_scenario(s, tmp_path / "procs", mode="processes")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_dumped_async_scenario_validates_again() -> None:
    """Regression: the server process of --mode processes reads the dumped scenario, which
    spells out every default; those are not settings the user gave."""
    s = validate(_async({"name": "fedcompass"}, server={"deadline_s": 50}))
    again = validate(yaml.safe_load(dump(s)))
    assert again == s
