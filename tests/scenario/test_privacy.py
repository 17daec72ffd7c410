"""The privacy section of a scenario: ``secagg`` (sound compositions validate and build; unsound
ones are refused with the fix named), ``dp`` (what it accepts, what it refuses and why,
target_epsilon calibration, the ε `fedkit describe` prints before a run) and the two together."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkit.cli import main
from fedkit.runtime.secagg import SecAggRound
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import _aggregator, build_server
from fedkit.scenario.privacy import dp_plan, sampling_of
from fedkit.secure.accountant import epsilon
from tests.conftest import tiny_raw

needs_dp_accounting = pytest.mark.skipif(importlib.util.find_spec("dp_accounting") is None,
                                         reason="needs dp-accounting (the privacy extra)")


def raw(secagg: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    over.setdefault("clients", {"count": 6, "per_round": {"fraction": 1.0}})
    return tiny_raw(privacy={"secagg": secagg or {}}, **over)


def test_a_sound_scenario_builds_a_secagg_round() -> None:
    s = validate(raw({"clip": 1.5, "bits": 64, "weighting": "uniform"},
                     compression={"downlink": "quant(bits=8)|zstd", "downlink_mode": "delta"},
                     strategy={"name": "fedadam"}))
    plan, params = build_server(s)
    assert isinstance(plan.policy, SecAggRound)
    f = plan.secagg.field
    assert (f.clip, f.bits, f.weighting, f.levels) == (1.5, 64, "uniform", (2**64 - 1) // 6)
    assert plan.secagg.dim == sum(p.size for p in params) + 3  # count, clipped, capped
    assert plan.policy.stage_deadline_s == s.server.deadline_s
    s = validate(raw({"deadline_s": 5, "complete": True}))
    plan, _ = build_server(s)
    assert plan.policy.stage_deadline_s == 5 and plan.secagg.complete


@pytest.mark.parametrize(("over", "match"), [
    ({"compression": {"uplink": "topk(ratio=0.1)"}}, r"sparsifies \(topk\).*unsound with masks.*uplink: identity"),
    ({"compression": {"uplink": "randk(ratio=0.2)|quant(bits=8)"}}, r"sparsifies \(randk\)"),
    ({"compression": {"uplink": "ef:sign"}}, r"error feedback.*uplink: identity"),
    ({"compression": {"uplink": "quant(bits=8)"}}, r"quantisation into the field, then masking"),
    ({"compression": {"uplink": "zstd"}}, r"uplink: identity"),
    ({"strategy": {"name": "fedmedian"}}, r"'fedmedian' needs each client's update.*fedavg"),
    ({"strategy": {"name": "krum"}}, r"'krum' needs each client's update"),
    ({"server": {"on_too_few": "retry"}}, r"on_too_few: skip"),
    ({"clients": {"count": 6, "per_round": {"count": 1}}}, r"at least 2 clients per round"),
    ({"secagg": {"degree": 6}}, r"degree 6 exceeds n - 1 = 5"),
    ({"secagg": {"degree": 3, "threshold": 4}}, r"threshold 4 exceeds degree 3"),
    ({"secagg": {"threshold": 6}}, r"threshold 6 exceeds the 5 neighbours"),
    ({"secagg": {"min_survivors": 7}}, r"min_survivors 7 exceeds the 6 clients"),
    ({"secagg": {"degree": 3, "complete": True}}, r"either degree or complete"),
    ({"secagg": {"max_weight": 10**9}}, r"max_weight 1000000000 exceeds the 715827882 levels.*bits: 64"),
    ({"secagg": {"clip": 0}}, r"clip"),
    ({"secagg": {"bits": 16}}, r"bits"),
    ({"secagg": {"neighbours": 4}}, r"neighbours"),
])
def test_unsound_compositions_are_refused_naming_the_fix(over: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate(raw(over.pop("secagg", None), **over))


def test_split_learning_with_secagg_is_refused() -> None:
    r = raw(model={"name": "mlp", "hidden": [16]}, split={"scheme": "splitfed_v1", "cut": "1"})
    with pytest.raises(ValueError, match="does not apply to split learning"):
        validate(r)


# --- privacy.dp ----------------------------------------------------------------------


def dp_raw(dp: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    raw = tiny_raw(**({"clients": {"count": 20, "per_round": {"fraction": 0.25, "poisson": True}}} | over))
    raw["privacy"] = {"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0, **(dp or {})}}
    return raw


@needs_dp_accounting
def test_sampling_the_accountant_assumes_is_the_scenarios() -> None:
    assert sampling_of(validate(dp_raw())) == (0.25, "poisson", 5.0)
    fixed = validate(dp_raw(clients={"count": 20, "per_round": {"count": 4}}))
    assert sampling_of(fixed) == (0.2, "fixed", 4.0)


@needs_dp_accounting
@pytest.mark.parametrize(
    ("dp", "over", "message"),
    [
        ({"target_epsilon": 2.0}, {}, "give either noise_multiplier or target_epsilon"),
        ({"noise_multiplier": None}, {}, "not neither"),
        ({"mode": "local", "adaptive": {}}, {}, "adaptive clipping needs a central server"),
        ({}, {"strategy": {"name": "fedmedian"}}, "strategy 'fedmedian' does not average"),
        ({}, {"strategy": {"name": "krum", "f": 1}}, "strategy 'krum' does not average"),
        ({}, {"server": {"on_too_few": "retry"}}, "on_too_few: retry"),
        ({"accountant": "pld"}, {"clients": {"count": 20, "per_round": {"count": 4}}}, "pld needs Poisson"),
        ({"adaptive": {}, "noise_multiplier": 1.0}, {}, "must be below 2 \\* count_stddev = 0.5"),
        ({"adaptive": {}, "noise_multiplier": None, "target_epsilon": 1.0}, {},
         "the noise for target_epsilon 1 must be below 2 \\* count_stddev"),
        ({"delta": 1.0}, {}, "delta"),
    ],
)
def test_unsound_combinations_are_refused(dp: dict, over: dict, message: str) -> None:
    raw = dp_raw(dp, **over)
    raw["privacy"]["dp"] = {k: v for k, v in raw["privacy"]["dp"].items() if v is not None}
    with pytest.raises(ScenarioError, match=message):
        validate(raw)


@needs_dp_accounting
def test_split_learning_with_dp_is_refused() -> None:
    raw = dp_raw(strategy={"name": "fedavg"})
    raw["split"] = {"scheme": "splitfed_v1", "cut": "1"}
    with pytest.raises(ScenarioError, match="split learning is not supported"):
        validate(raw)


@needs_dp_accounting
def test_local_dp_takes_any_strategy_and_robust_ones_too() -> None:
    s = validate(dp_raw({"mode": "local"}, strategy={"name": "fedmedian"}))
    plan = dp_plan(s, _aggregator(s))
    assert plan is not None and plan.aggregator is None
    assert plan.task(None).noise_multiplier == 1.0
    assert plan.final_epsilon() == pytest.approx(epsilon(1.0, 1.0, 3, 1e-5))  # q = 1: every round


@needs_dp_accounting
def test_target_epsilon_is_reached_within_tolerance() -> None:
    for sampling in ({"fraction": 0.25, "poisson": True}, {"count": 5}):
        s = validate(dp_raw({"noise_multiplier": None, "target_epsilon": 3.0}, rounds=8,
                            clients={"count": 20, "per_round": sampling}))
        plan = dp_plan(s, _aggregator(s))
        assert plan is not None
        assert 3.0 * 0.98 <= plan.final_epsilon() <= 3.0
        assert plan.curve[-1] == pytest.approx(plan.final_epsilon(), rel=1e-9)


@needs_dp_accounting
def test_adaptive_clipping_splits_the_noise_between_update_and_count() -> None:
    s = validate(dp_raw({"adaptive": {"count_stddev": 2.0}, "noise_multiplier": 1.0}))
    plan = dp_plan(s, _aggregator(s))
    assert plan is not None and plan.aggregator is not None
    zd = plan.aggregator.noise_multiplier
    assert zd**-2 + 4.0**-2 == pytest.approx(1.0)
    assert plan.task(plan.aggregator.init(_params())).report_unclipped


def _params() -> list:
    import numpy as np

    return [np.zeros(3)]


@needs_dp_accounting
def test_describe_prints_the_epsilon_of_the_full_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "dp.yaml"
    f.write_text(yaml.safe_dump(dp_raw({"noise_multiplier": 1.2, "accountant": "pld"}, rounds=5)))
    assert main(["describe", str(f)]) == 0
    text = capsys.readouterr().out
    want = epsilon(1.2, 0.25, 5, 1e-5, method="pld")
    assert "ε after 5 rounds" in text and f"{want:.4g} at δ = 1e-05" in text
    assert "poisson, q = 0.25" in text


# --- secagg and dp together, and dp with the engine's newer round policies -------------------


@needs_dp_accounting
def test_local_dp_with_secagg_builds_both_and_central_dp_with_secagg_is_refused() -> None:
    both = raw()
    both["privacy"]["dp"] = {"mode": "local", "clip_norm": 1.0, "noise_multiplier": 0.5}
    plan, _ = build_server(validate(both))
    assert isinstance(plan.policy, SecAggRound)
    assert plan.dp is not None and plan.dp.aggregator is None  # the noise is on the clients
    assert plan.dp.task(None).noise_multiplier == 0.5
    central = raw()
    central["privacy"]["dp"] = {"clip_norm": 1.0, "noise_multiplier": 0.5}
    with pytest.raises(ScenarioError, match=r"mode: central with privacy.secagg is not supported.*dp.mode: local"):
        validate(central)


@pytest.mark.parametrize(("over", "match"), [
    ({"clients": {"count": 6, "per_round": {"fraction": 0.5, "poisson": True}}},
     r"privacy.secagg: the field is sized for a fixed number.*clients.per_round.poisson"),
    ({"attacks": [{"kind": "little_is_enough", "fraction": 0.2}]},
     r"privacy.secagg: attacks little_is_enough are simulated where the server sees each update"),
])
def test_secagg_refuses_what_its_field_or_its_sum_cannot_serve(over: dict[str, Any], match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        validate(raw(**over))


@needs_dp_accounting
@pytest.mark.parametrize(("dp", "over", "match"), [
    ({}, {"strategy": {"name": "fedbuff"}, "clients": {"count": 20}}, r"'fedbuff' is asynchronous.*one per client"),
    ({"mode": "local"}, {"strategy": {"name": "fedasync"}, "clients": {"count": 20}}, r"'fedasync' is asynchronous"),
    ({}, {"server": {"over_select": 1.5}, "clients": {"count": 20, "per_round": {"count": 4}}},
     r"over_select 1.5 trains more clients than the round's sample"),
])
def test_dp_refuses_rounds_the_accountant_does_not_count(dp: dict[str, Any], over: dict[str, Any], match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        validate(dp_raw(dp, **over))


def test_the_privacy_section_is_always_there() -> None:
    s = validate(tiny_raw())
    assert s.privacy.secagg is None and s.privacy.dp is None
