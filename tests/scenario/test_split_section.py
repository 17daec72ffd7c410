"""The scenario's ``split:`` section: valid ones load (and survive a dump), bad ones name what is
wrong; a wrong cut lists the valid names with a suggestion, and the CLI exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedkit.cli import main
from fedkit.scenario import ScenarioError, dump, validate
from tests.conftest import tiny_raw


def raw(split: dict, **over) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return tiny_raw(model={"name": "mlp", "hidden": [16, 16]}, split=split, **over)


def test_a_valid_split_section_loads_and_round_trips() -> None:
    s = validate(raw({"scheme": "ushape", "cuts": ["2", "4"], "activations": "quant(bits=8)",
                      "server": {"optimizer": "adam", "lr": 0.01}, "bottleneck": {"dim": 8}}))
    assert s.split is not None and s.split.cut_list == ("2", "4") and s.split.server.optimizer == "adam"
    assert validate(yaml.safe_load(dump(s))) == s


@pytest.mark.parametrize(
    "split,over,match",
    [
        ({"scheme": "splitfed_v1", "cut": "22"}, {}, r"unknown cut '22' \(did you mean '2'\?\); valid cuts: 0, 1, 2, 3, 4"),
        ({"scheme": "ushape", "cut": "2"}, {}, r"ushape takes 2 cut\(s\)"),
        ({"scheme": "vanilla", "cut": "2", "cuts": ["1", "2"]}, {}, "either 'cut' or 'cuts'"),
        ({"scheme": "vanilla"}, {}, "either 'cut' or 'cuts'"),
        ({"scheme": "splitfed", "cut": "2"}, {}, "splitfed_v1"),
        ({"scheme": "vanilla", "cut": "2", "gradients": "quant(bitz=8)"}, {}, "gradients: .*did you mean 'bits'"),
        ({"scheme": "local_loss", "cut": "2", "gradients": "quant(bits=8)"}, {}, "sends no gradients"),
        ({"scheme": "vanilla", "cut": "2", "bottleneck": {"dim": 16}}, {}, "does not shrink the cut"),
        ({"scheme": "vanilla", "cut": "2"}, {"strategy": {"name": "fedadam"}}, "vanilla relays the client part"),
        ({"scheme": "splitfed_v2", "cut": "2"}, {"compression": {"downlink_mode": "delta"}}, "downlink_mode: full"),
        ({"scheme": "splitfed_v1", "cut": "2"}, {"evaluation": {"federated": True}}, "federated evaluation"),
        ({"scheme": "splitfed_v1", "cut": "2", "server": {"lr": 0}}, {}, "greater than 0"),
    ],
)
def test_bad_split_sections_name_the_problem(split: dict, over: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ScenarioError, match=match):
        validate(raw(split, **over))


def test_a_wrong_cut_exits_2_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # type: ignore[type-arg]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw({"scheme": "splitfed_v1", "cut": "3x"})))
    assert main(["validate", str(path)]) == 2
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown cut '3x' (did you mean '3'?); valid cuts: 0, 1, 2, 3, 4" in err
    assert not (tmp_path / "run").exists()


def test_a_split_scenario_runs_from_the_cli(tmp_path: Path) -> None:
    import json

    scenario = Path(__file__).parent / "data" / "split_tiny.yaml"
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and (out / "server_params.npz").exists()
    assert summary["total_bytes_activations_up"] > 0 and summary["total_bytes_gradients_down"] > 0
    assert summary["total_bytes_labels_up"] > 0 and summary["total_bytes_activations_down"] == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["bytes_down"] > 0 and row["bytes_up"] > 0 and row["test_acc"] is not None
