"""Attacks wired into scenarios: who is malicious, what each attacker sends, data poisoning,
and the outcome that matters: a sign-flip minority breaks FedAvg, robust rules survive it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.aggregation import ROOT_CLIENT, make_aggregator
from fedkit.attacks import LittleIsEnough, alie_z, assign_malicious
from fedkit.experiment import inprocess_link, run_scenario
from fedkit.runtime.adversary import Colluding
from fedkit.runtime.root_set import RootSet
from fedkit.runtime.server import run
from fedkit.scenario.attacks import malicious_sets
from fedkit.scenario.build import build, build_clients, client_names
from fedkit.scenario.load import validate
from fedkit.types import Params, Update
from tests.conftest import tiny_raw


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def raw(attacks: list[dict[str, Any]], strategy: dict[str, Any] | None = None, rounds: int = 6) -> dict[str, Any]:
    return tiny_raw(
        rounds=rounds, clients={"count": 10, "per_round": {"fraction": 1.0}},
        data={"dataset": {"name": "digits"}, "partition": {"name": "iid"}},
        train={"epochs": 2, "batch_size": 16, "lr": 0.3},
        strategy=strategy or {"name": "fedavg"}, attacks=attacks,
    )


@dataclasses.dataclass
class Capture:
    inner: Any
    seen: list[list[Update]] = dataclasses.field(default_factory=list)

    def init(self, params: Params) -> Any:
        return self.inner.init(params)

    def step(self, state: Any, params: Params, updates: Sequence[Update]) -> Any:
        self.seen.append(list(updates))
        return self.inner.step(state, params, updates)


def _accuracy(r: dict[str, Any]) -> float:
    exp = build(validate(r))
    final = run(exp.plan, inprocess_link(exp.clients, mods=exp.mods), exp.initial_state())
    assert exp.plan.evaluate is not None
    return exp.plan.evaluate(final.params)["accuracy"]


def test_sign_flip_at_30_percent_breaks_fedavg_while_median_and_krum_survive() -> None:
    flip = [{"kind": "sign_flip", "fraction": 0.3, "factor": 4.0}]
    assert _accuracy(raw(flip)) < 0.3
    assert _accuracy(raw(flip, {"name": "fedmedian"})) > 0.75
    assert _accuracy(raw(flip, {"name": "krum", "f": 3})) > 0.7


def test_malicious_clients_are_chosen_by_seed_and_get_the_attack_mods() -> None:
    r = raw([{"kind": "sign_flip", "fraction": 0.2}, {"kind": "scaling", "fraction": 0.1}])
    s = validate(r)
    (a, bad_a), (b, bad_b) = malicious_sets(s)
    assert [bad_a, bad_b] == assign_malicious(client_names(10), [0.2, 0.1], s.seed)
    assert len(bad_a) == 2 and len(bad_b) == 1 and not bad_a & bad_b
    exp = build(s)
    assert set(exp.mods) == bad_a | bad_b
    cap = Capture(exp.plan.aggregator)
    plan = dataclasses.replace(exp.plan, aggregator=cap, rounds=1)
    run(plan, inprocess_link(exp.clients, mods=exp.mods), exp.initial_state())
    honest = build(validate(raw([])))
    cap0 = Capture(honest.plan.aggregator)
    run(dataclasses.replace(honest.plan, aggregator=cap0, rounds=1), inprocess_link(honest.clients),
        honest.initial_state())
    for got, clean in zip(cap.seen[0], cap0.seen[0], strict=True):
        factor = -1.0 if got.client in bad_a else 10.0 if got.client in bad_b else 1.0  # scaling: n = 10
        for x, y in zip(got.delta, clean.delta, strict=True):
            np.testing.assert_allclose(x, factor * y, rtol=1e-5, atol=1e-7)


def test_label_flip_poisons_exactly_the_malicious_clients_data() -> None:
    s = validate(raw([{"kind": "label_flip", "fraction": 0.3}]))
    ((_, bad),) = malicious_sets(s)
    clean, poisoned = build_clients(validate(raw([]))), build_clients(s)
    for c in clean:
        want = 9 - clean[c].train.y if c in bad else clean[c].train.y
        assert torch.equal(poisoned[c].train.y, want)
        assert torch.equal(poisoned[c].train.x, clean[c].train.x)


def test_little_is_enough_colludes_at_the_servers_door() -> None:
    s = validate(raw([{"kind": "little_is_enough", "fraction": 0.3}]))
    exp = build(s)
    assert isinstance(exp.plan.aggregator, Colluding) and not exp.mods
    ((_, bad),) = malicious_sets(s)
    inner = Capture(make_aggregator("fedavg"))
    agg = Colluding(inner, LittleIsEnough(), bad, seed=0)
    rng = np.random.default_rng(0)
    ups = [Update(c, [rng.normal(size=5)], 1) for c in client_names(10)]
    agg.step(agg.init([np.zeros(5)]), [np.zeros(5)], ups)
    benign = np.stack([u.delta[0] for u in ups if u.client not in bad])
    want = benign.mean(0) - alie_z(10, 3) * benign.std(0)
    for u in inner.seen[0]:
        if u.client in bad:
            np.testing.assert_allclose(u.delta[0], want)


def test_fltrust_trains_its_root_update_on_the_training_split_each_round() -> None:
    exp = build(validate(raw([], {"name": "fltrust", "root_size": 50}, rounds=1)))
    root = exp.plan.aggregator
    assert isinstance(root, RootSet) and root.size == 50
    cap = Capture(root.inner)
    plan = dataclasses.replace(exp.plan, aggregator=dataclasses.replace(root, inner=cap))
    run(plan, inprocess_link(exp.clients), exp.initial_state())
    (ups,) = cap.seen
    assert [u.client for u in ups].count(ROOT_CLIENT) == 1 and len(ups) == 11


def test_update_attacks_are_refused_in_processes_mode(tmp_path: Any) -> None:
    s = validate(raw([{"kind": "gaussian", "fraction": 0.2}]))
    with pytest.raises(ValueError, match="gaussian are simulated in-process only"):
        run_scenario(s, tmp_path / "run", mode="processes")


def test_attackers_keep_the_default_chain_around_their_attack_in_every_executor() -> None:
    """The attack sits just outside DP clipping (nothing clips it) and inside masking and the
    uplink codec (they still apply); pool and ray workers rebuild the same chains."""
    from fedkit.runtime.client import DEFAULT_MODS, dp_clip
    from fedkit.scenario.execution import scenario_hosts
    from fedkit.scenario.load import dump

    s = validate(raw([{"kind": "sign_flip", "fraction": 0.2}]))
    exp = build(s)
    at = DEFAULT_MODS.index(dp_clip)
    for chain in exp.mods.values():
        assert chain[:at] == DEFAULT_MODS[:at] and chain[at + 1:] == DEFAULT_MODS[at:]
    workers = scenario_hosts(dump(s))
    assert {c for c, h in workers.items() if h.mods != DEFAULT_MODS} == set(exp.mods)
