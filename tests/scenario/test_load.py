from pathlib import Path

import pytest
import yaml

from fedkit.scenario import ScenarioError, load, validate
from tests.conftest import tiny_raw

SCENARIOS = sorted((Path(__file__).parents[2] / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_is_valid(path: Path) -> None:
    s = load(path)
    assert s.rounds >= 1 and s.clients.count >= 1


def test_there_are_shipped_scenarios() -> None:
    assert any(p.name == "quickstart.yaml" for p in SCENARIOS)


def _err(raw: dict, tmp_path: Path) -> ScenarioError:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ScenarioError) as e:
        load(f)
    assert str(f) in str(e.value)
    return e.value


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["rouns"] = raw.pop("rounds")
    msg = str(_err(raw, tmp_path))
    assert "rouns: unknown key 'rouns' (did you mean 'rounds'?)" in msg
    assert "rounds: required key is missing" in msg


def test_unknown_nested_key_names_the_path(tmp_path: Path) -> None:
    msg = str(_err(tiny_raw(train__learning_rate=0.1), tmp_path))
    assert "train.learning_rate: unknown key 'learning_rate'" in msg
    assert "allowed:" in msg and "lr" in msg


def test_unknown_partition_and_parameter(tmp_path: Path) -> None:
    msg = str(_err(tiny_raw(data__partition={"name": "dirichlet", "alpah": 0.5}), tmp_path))
    assert "data.partition" in msg and "'alpah'" in msg and "did you mean 'alpha'" in msg
    msg = str(_err(tiny_raw(data__partition={"name": "dirichlit"}), tmp_path))
    assert "unknown partition 'dirichlit' (did you mean 'dirichlet'?)" in msg


def test_wrong_values_are_named(tmp_path: Path) -> None:
    msg = str(_err(tiny_raw(train__optimizer="adamw"), tmp_path))
    assert "train.optimizer" in msg and "'sgd' or 'adam'" in msg
    msg = str(_err(tiny_raw(train__lr=-1), tmp_path))
    assert "train.lr: Input should be greater than 0" in msg
    msg = str(_err(tiny_raw(data__dataset={"name": "synthetic", "alpha": "lots"}), tmp_path))
    assert "data.dataset" in msg and "'alpha'" in msg


def test_unknown_strategy_and_model(tmp_path: Path) -> None:
    msg = str(_err(tiny_raw(strategy={"name": "fedavgg"}), tmp_path))
    assert "strategy" in msg and "fedavg" in msg
    msg = str(_err(tiny_raw(model={"name": "mpl"}), tmp_path))
    assert "unknown model 'mpl' (did you mean 'mlp'?)" in msg


def test_inconsistent_sampling(tmp_path: Path) -> None:
    msg = str(_err(tiny_raw(clients__per_round={"count": 50}), tmp_path))
    assert "exceeds clients.count=6" in msg


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(yaml.safe_dump(tiny_raw()))
    s = load(f, ["rounds=7", "data.partition.alpha=0.1", "model.hidden=[8, 8]"])
    assert s.rounds == 7 and s.data.partition["alpha"] == 0.1 and s.model["hidden"] == [8, 8]
    with pytest.raises(ScenarioError, match="rounds"):
        load(f, ["rounds=zero"])


def test_not_a_mapping() -> None:
    with pytest.raises(ScenarioError, match="mapping"):
        validate([1, 2, 3])
