"""``execution:`` in a scenario and ``fedkit run --executor``: checked, and the same model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedkit.cli import main
from fedkit.report.run_dir import load_params
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.execution import EXECUTORS
from fedkit.scenario.schema import Execution
from tests.conftest import tiny_raw


def test_every_kind_has_an_executor() -> None:
    kinds = Execution.model_fields["kind"].annotation.__args__  # type: ignore[union-attr]
    assert set(kinds) == set(EXECUTORS)
    assert validate(tiny_raw()).execution.kind == "sequential"


@pytest.mark.parametrize(
    ("execution", "message"),
    [
        ({"kind": "threads"}, "execution.kind"),
        ({"kind": "pool", "address": "auto"}, "address is for kind ray"),
        ({"kind": "stacked", "workers": 4}, "workers is for kinds pool and ray"),
        ({"kind": "pool", "workers": 0}, "execution.workers"),
        ({"kind": "ray", "adress": "auto"}, "adress"),
    ],
)
def test_bad_execution_sections_are_errors_naming_the_field(execution: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        validate(tiny_raw(execution=execution))


def test_cli_executor_runs_the_same_model(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(tiny_raw(rounds=2)))
    for kind in ("sequential", "stacked"):
        assert main(["run", str(scenario), "--out", str(tmp_path / kind), "-q", "--executor", kind]) == 0
    seq, _ = load_params(tmp_path / "sequential" / "params.npz")
    st, _ = load_params(tmp_path / "stacked" / "params.npz")
    for a, b in zip(seq, st, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    assert "kind: stacked" in (tmp_path / "stacked" / "scenario.yaml").read_text()


def test_cli_offers_every_kind() -> None:
    from fedkit.cli import parser

    run = next(a for a in parser()._subparsers._group_actions[0].choices["run"]._actions  # type: ignore[union-attr]
               if "--executor" in a.option_strings)
    assert set(run.choices) == set(EXECUTORS)
