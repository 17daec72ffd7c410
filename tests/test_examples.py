"""The examples/ folder runs as README says: custom strategy, training, evaluation and metric
hooks by import path, a learning-rate schedule, and loading the trained model back."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest
import yaml

from fedkit.experiment import run_scenario
from fedkit.scenario import ScenarioError, load, validate
from fedkit.scenario.build import build_server

ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # import paths resolve against the current directory


def test_custom_example_runs_and_loads_back(tmp_path: Path) -> None:
    s = load(ROOT / "examples/custom.yaml", ["rounds=8"])
    summary = run_scenario(s, tmp_path / "run")
    rows = [json.loads(r) for r in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all("test_balanced_acc" in r and "worst_train_loss" in r for r in rows)
    assert summary["final_accuracy"] > 0.6
    recorded = yaml.safe_load((tmp_path / "run/scenario.yaml").read_text())
    assert recorded["strategy"]["name"] == "examples.custom_strategy:make"
    assert recorded["train"]["fn"] == "examples.custom_train:local_step"
    clients = [json.loads(r) for r in (tmp_path / "run/clients.jsonl").read_text().splitlines()]
    assert {c["round"] for c in clients} == set(range(1, 9)) and all("train_loss" in c for c in clients)
    acc = runpy.run_path(str(ROOT / "examples/load_model.py"))["main"](str(tmp_path / "run"))
    assert acc > 0.6


def test_schedule_sets_each_rounds_learning_rate() -> None:
    s = load(ROOT / "examples/custom.yaml", ["rounds=5"])
    plan, _ = build_server(s)
    lrs = [plan.train(r).lr for r in range(1, 6)]
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    step = load(ROOT / "examples/custom.yaml", ["train.schedule={kind: step, gamma: 0.5, every: 2}"])
    plan, _ = build_server(step)
    assert [plan.train(r).lr for r in (1, 2, 3, 5)] == pytest.approx([0.2, 0.2, 0.1, 0.05])


def test_custom_strategy_and_training_give_the_same_model_over_grpc(tmp_path: Path) -> None:
    s = load(ROOT / "examples/custom.yaml", ["rounds=2", "evaluation.fn=null", "evaluation.metrics_fn=null"])
    local = run_scenario(s, tmp_path / "local")
    remote = run_scenario(s, tmp_path / "remote", mode="processes", workers=2)
    assert remote["params_sha256"] == local["params_sha256"]


def test_a_failing_import_shows_the_real_error(tmp_path: Path) -> None:
    (tmp_path / "brokenmod.py").write_text("import not_a_module_anywhere\n")
    os.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "examples/custom.yaml").read_text())
    raw["train"]["fn"] = "brokenmod:local_step"
    with pytest.raises(ScenarioError, match="No module named 'not_a_module_anywhere'"):
        validate(raw)
    raw["train"]["fn"] = None
    raw["strategy"] = {"name": "examples.custom_strategy:nope"}
    with pytest.raises(ScenarioError, match="has no attribute 'nope'"):
        validate(raw)
