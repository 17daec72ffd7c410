"""The privacy.dp section: what it accepts, what it refuses and why, target_epsilon calibration,
and the ε `fedkit describe` prints before a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("dp_accounting")

from fedkit.cli import main  # noqa: E402
from fedkit.scenario import ScenarioError  # noqa: E402
from fedkit.scenario.build import _aggregator  # noqa: E402
from fedkit.scenario.load import validate  # noqa: E402
from fedkit.scenario.privacy import dp_plan, sampling_of  # noqa: E402
from fedkit.secure.accountant import epsilon  # noqa: E402
from tests.conftest import tiny_raw  # noqa: E402


def dp_raw(dp: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    raw = tiny_raw(**({"clients": {"count": 20, "per_round": {"fraction": 0.25, "poisson": True}}} | over))
    raw["privacy"] = {"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0, **(dp or {})}}
    return raw


def test_sampling_the_accountant_assumes_is_the_scenarios() -> None:
    assert sampling_of(validate(dp_raw())) == (0.25, "poisson", 5.0)
    fixed = validate(dp_raw(clients={"count": 20, "per_round": {"count": 4}}))
    assert sampling_of(fixed) == (0.2, "fixed", 4.0)


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


def test_split_learning_with_dp_is_refused() -> None:
    raw = dp_raw(strategy={"name": "fedavg"})
    raw["split"] = {"scheme": "splitfed_v1", "cut": "1"}
    with pytest.raises(ScenarioError, match="split learning is not supported"):
        validate(raw)


def test_local_dp_takes_any_strategy_and_robust_ones_too() -> None:
    s = validate(dp_raw({"mode": "local"}, strategy={"name": "fedmedian"}))
    plan = dp_plan(s, _aggregator(s))
    assert plan is not None and plan.aggregator is None
    assert plan.task(None).noise_multiplier == 1.0
    assert plan.final_epsilon() == pytest.approx(epsilon(1.0, 1.0, 3, 1e-5))  # q = 1: every round


def test_target_epsilon_is_reached_within_tolerance() -> None:
    for sampling in ({"fraction": 0.25, "poisson": True}, {"count": 5}):
        s = validate(dp_raw({"noise_multiplier": None, "target_epsilon": 3.0}, rounds=8,
                            clients={"count": 20, "per_round": sampling}))
        plan = dp_plan(s, _aggregator(s))
        assert plan is not None
        assert 3.0 * 0.98 <= plan.final_epsilon() <= 3.0
        assert plan.curve[-1] == pytest.approx(plan.final_epsilon(), rel=1e-9)


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


def test_describe_prints_the_epsilon_of_the_full_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "dp.yaml"
    f.write_text(yaml.safe_dump(dp_raw({"noise_multiplier": 1.2, "accountant": "pld"}, rounds=5)))
    assert main(["describe", str(f)]) == 0
    text = capsys.readouterr().out
    want = epsilon(1.2, 0.25, 5, 1e-5, method="pld")
    assert "ε after 5 rounds" in text and f"{want:.4g} at δ = 1e-05" in text
    assert "poisson, q = 0.25" in text
