"""FedEx-LoRA, FLoRA and FlexLoRA through the round engine (fedkit/scenario/lora.py): the base
change travels in the downlink and clients fold it in, per-client ranks come from ``devices:``
profiles, and bad adapter updates are refused like any bad update.

Float tolerance: factors travel as float32, so "exact" is up to float32 rounding of the averaged
factors and of the base change (atol 1e-5 on weights of magnitude ~0.1)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedkit.aggregation.lora import LoraAggregator, merged_delta
from fedkit.experiment import run_scenario, scenario_link
from fedkit.report.run_dir import read_metrics
from fedkit.runtime.server import run_round
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import build, initial_state
from fedkit.types import Update

pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).parents[1] / "peft"))
from test_lora_mlp import raw  # noqa: E402  (the LoRA-on-MLP scenario of tests/peft)

ATOL = 1e-5
PROFILES = {"small": {"compute": {"samples_per_s": 100}, "up_mbps": 10, "down_mbps": 10, "lora_rank": 2},
            "big": {"compute": {"samples_per_s": 100}, "up_mbps": 10, "down_mbps": 10, "lora_rank": 4}}


def scenario(agg: str, **over: Any) -> Any:
    extra: dict[str, Any] = {}
    if agg == "flexlora":
        extra["devices"] = {"profiles": PROFILES, "assign": {"small": 0.34, "big": 0.66}}
    return validate(raw(peft={**raw()["peft"], "aggregation": agg}, **(extra | over)))


@dataclasses.dataclass(frozen=True)
class Recorder:
    """The plan's aggregator, keeping what each round hands it (the clients' deltas)."""

    inner: LoraAggregator
    seen: list[list[Update]]

    def init(self, params: Any) -> Any:
        return self.inner.init(params)

    def step(self, state: Any, params: Any, updates: Any) -> Any:
        self.seen.append(list(updates))
        return self.inner.step(state, params, updates)


def one_round(agg: str) -> tuple[Any, Any, LoraAggregator, list[Update], Any]:
    """One round where clients move far apart (non-IID, a large step): the factor gap shows."""
    exp = build(scenario(agg, train={"steps": 20, "batch_size": 16, "lr": 0.5},
                         data={"dataset": {"name": "digits"}, "partition": {"name": "dirichlet", "alpha": 0.3}}))
    seen: list[list[Update]] = []
    lora = exp.plan.aggregator
    plan = dataclasses.replace(exp.plan, aggregator=Recorder(lora, seen))
    link = scenario_link(exp)
    try:
        state0 = initial_state(plan, exp.init_params)
        state1, _ = run_round(plan, link, state0)
    finally:
        link.close()
    return exp, state0, lora, seen[0], state1


def _base(exp: Any) -> np.ndarray:
    from fedkit.models import init_model

    module = init_model(exp.plan.model.spec, (64,), 10, 0)
    return module.inner.get_submodule("base_model.model.1").base_layer.weight.detach().double().numpy()


@pytest.mark.parametrize("agg", ["fedex", "flora"])
def test_merged_global_is_the_average_of_the_clients_merged_weights(agg: str) -> None:
    exp, state0, lora, updates, state1 = one_round(agg)
    pair = lora.layout.pairs[0]
    w0 = _base(exp)
    locals_ = lora.clients_of(state0.params, updates)
    p = np.array([u.num_examples for u in updates], float)
    p /= p.sum()
    avg = sum(w * (w0 + merged_delta(lora.layout, c, pair)) for c, w in zip(locals_, p, strict=True))
    # what the clients fold into their base next round, as it travels (float32)
    extras = lora.base_extras(state1.agg_state)
    change = extras[0] if agg == "fedex" else extras[0].astype(float) @ extras[1].astype(float)
    merged = w0 + change + merged_delta(lora.layout, state1.params, pair)
    np.testing.assert_allclose(merged, avg, atol=ATOL)
    assert np.max(np.abs(change)) > 20 * ATOL  # and the base change is not trivially small
    if agg == "flora":  # a fresh adapter: B = 0, so the stack carries the whole update
        assert not np.any(state1.params[pair.b])


def test_clients_fold_the_sent_base_change_into_their_frozen_weights() -> None:
    from fedkit.models import init_model
    from fedkit.peft.model import fold_base

    exp, _, lora, _, state1 = one_round("fedex")
    module = init_model(exp.plan.model.spec, (64,), 10, 0)
    w0 = _base(exp)
    sent = lora.downlink(state1.params, state1.agg_state, ["client_000"])["client_000"]
    adapter = fold_base(module, sent)
    assert len(adapter) == len(state1.params)
    w = module.inner.get_submodule("base_model.model.1").base_layer.weight.detach().double().numpy()
    np.testing.assert_allclose(w, w0 + sent[-1], atol=1e-6)
    fold_base(module, adapter + [np.zeros_like(sent[-1])])  # W0 as built, not W0 + the last change
    w = module.inner.get_submodule("base_model.model.1").base_layer.weight.detach().double().numpy()
    np.testing.assert_array_equal(w, w0)


def test_fedex_downlink_counts_the_residual_and_flora_downlink_grows(tmp_path: Path) -> None:
    rows = {}
    for agg in ("fedit", "fedex", "flora"):
        run_scenario(scenario(agg, rounds=3), tmp_path / agg)
        rows[agg] = [r["bytes_down"] for r in read_metrics(tmp_path / agg)]
    residual = 32 * 64 * 4  # one dense float32 residual per client per round (3 clients)
    assert all(x - y >= 3 * residual for x, y in zip(rows["fedex"], rows["fedit"], strict=True))
    f = rows["flora"]
    assert f[0] < f[1] < f[2]  # the stack of every round so far: rank 3 clients x 4 more each round
    assert f[2] - f[1] == f[1] - f[0] == 3 * 12 * (32 + 64) * 4 + 0 * f[0]


def test_flexlora_clients_receive_and_train_their_own_ranks(tmp_path: Path) -> None:
    s = scenario("flexlora", rounds=2)
    exp = build(s)
    lora = exp.plan.aggregator
    ranks = dict(lora.ranks)
    assert sorted(ranks.values()) == [2, 4, 4]
    small = next(c for c, r in ranks.items() if r == 2)
    assert exp.plan.models[small].spec["peft"]["lora"]["r"] == 2
    sent = lora.downlink(exp.init_params, lora.init(exp.init_params), list(ranks))
    assert sent[small][0].shape == (2, 64) and sent[small][1].shape == (32, 2)
    assert all(sent[c][0].shape == (4, 64) for c, r in ranks.items() if r == 4)
    run_scenario(s, tmp_path / "run")
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "clients.jsonl").read_text().splitlines()]
    clients = [r for r in rows if r.get("kind") == "train"]
    assert all(r["status"] == "ok" for r in clients)
    down = {r["client"]: r["bytes_down"] for r in clients if r["round"] == 2}
    assert down[small] < min(v for c, v in down.items() if c != small)  # a smaller adapter to send


def test_lora_ranks_need_a_variant_that_takes_them() -> None:
    with pytest.raises(ScenarioError, match="needs one rank for all clients"):
        validate(raw(devices={"profiles": PROFILES, "assign": {"small": 0.34, "big": 0.66}}))
    big = {**PROFILES, "big": {**PROFILES["big"], "lora_rank": 8}}
    with pytest.raises(ScenarioError, match="above peft.lora.r=4"):
        scenario("flexlora", devices={"profiles": big, "assign": {"small": 0.34, "big": 0.66}})
    with pytest.raises(ScenarioError, match="downlink_mode full"):
        scenario("fedex", compression={"downlink_mode": "delta"})


@pytest.mark.slow
@pytest.mark.parametrize("agg", ["fedex", "flexlora"])
def test_inprocess_and_processes_give_identical_params(agg: str, tmp_path: Path) -> None:
    s = scenario(agg, rounds=2)
    a = run_scenario(s, tmp_path / "inproc")
    b = run_scenario(s, tmp_path / "procs", mode="processes", workers=2)
    assert a["params_sha256"] == b["params_sha256"]
    assert [r["bytes_down"] for r in read_metrics(tmp_path / "inproc")] == \
        [r["bytes_down"] for r in read_metrics(tmp_path / "procs")]


@pytest.mark.parametrize("agg", ["ffa", "fedsvd"])
def test_dp_lora_runs_for_one_factor_variants_and_reports_epsilon(agg: str, tmp_path: Path) -> None:
    dp = {"dp": {"clip_norm": 0.5, "noise_multiplier": 1.0}}
    s = scenario(agg, privacy=dp)
    exp = build(s)
    run_scenario(s, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    eps = [r["dp_epsilon"] for r in rows]
    assert 0 < eps[0] < eps[1] and all(np.isfinite(eps))
    assert rows[0]["dp_noise_std"] == pytest.approx(1.0 * 0.5 / 3)
    from fedkit.report.run_dir import RunDir

    final = RunDir(tmp_path / "run", resume=True).read_checkpoint()
    assert final is not None
    a = final.params[0].astype(np.float64)
    if agg == "ffa":  # the noise lands on what clients send (B, head): A stays exactly shared
        assert np.array_equal(final.params[0], exp.init_params[0])
    else:  # re-factorised after the noised mean: post-processing, A A^T = I
        np.testing.assert_allclose(a @ a.T, np.eye(a.shape[0]), atol=1e-5)
    assert not np.array_equal(final.params[1], exp.init_params[1])


@pytest.mark.parametrize("agg", ["fedex", "flora", "flexlora"])
def test_dp_is_refused_where_the_sensitivity_does_not_hold(agg: str) -> None:
    with pytest.raises(ScenarioError, match="sensitivity does not bound"):
        scenario(agg, privacy={"dp": {"clip_norm": 0.5, "noise_multiplier": 1.0}})
    with pytest.raises(ScenarioError, match="use mode central"):
        scenario("ffa", privacy={"dp": {"mode": "local", "clip_norm": 0.5, "noise_multiplier": 1.0}})


def test_fedsa_resumed_run_equals_a_straight_one(tmp_path: Path) -> None:
    """The clients' personal B survive a crash: the simulation checkpoints them with the round."""
    def s(rounds: int) -> Any:
        return scenario("fedsa", rounds=rounds, evaluation={"centralized": False, "federated": True},
                        data={"dataset": {"name": "digits"}, "partition": {"name": "dirichlet", "alpha": 0.3}})

    straight = run_scenario(s(3), tmp_path / "straight")
    run_scenario(s(2), tmp_path / "resumed")
    resumed = run_scenario(s(3), tmp_path / "resumed", resume=True, force=True)  # rounds: 2 -> 3
    assert resumed["params_sha256"] == straight["params_sha256"]
    fed = [[r["fed_acc"] for r in read_metrics(tmp_path / p)] for p in ("straight", "resumed")]
    assert fed[0] == fed[1]


def test_rank_change_on_resume_is_refused_and_with_force_names_the_tensors(tmp_path: Path) -> None:
    from fedkit.report.run_dir import RunDirExists

    run_scenario(scenario("fedit", rounds=1), tmp_path / "run")
    wider = validate(raw(rounds=2, peft={**raw()["peft"], "lora": {"r": 8, "alpha": 8, "targets": ["1"]}}))
    with pytest.raises(RunDirExists, match="peft"):
        run_scenario(wider, tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match=r"lora_A.weight: checkpoint \(4, 64\), scenario \(8, 64\).*start a new run"):
        run_scenario(wider, tmp_path / "run", resume=True, force=True)
