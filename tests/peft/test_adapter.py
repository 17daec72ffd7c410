"""Bottleneck adapters (Houlsby et al. 2019): zero-initialised up-projection, only adapters and
train_also heads travel, runs on fedkit's own MLP and on a transformers folder, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.cli import main
from fedkit.experiment import load_model, run_scenario
from fedkit.report.run_dir import read_metrics
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import build

from .conftest import hf_raw, token_data

ADAPTER = {"method": "adapter", "adapter": {"dim": 4, "targets": ["1"]}, "train_also": ["3"]}


def mlp_raw(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "adapter-mlp", "seed": 3, "rounds": 3, "clients": {"count": 2},
        "data": {"dataset": {"name": "digits"}, "partition": {"name": "iid"}},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"steps": 10, "batch_size": 16, "lr": 0.01, "optimizer": "adam"},
        "peft": ADAPTER, "output": {"plot": False},
    }
    return s | over


def test_mlp_params_are_adapter_and_head_and_start_at_the_base(tmp_path: Path) -> None:
    from fedkit.models import init_model

    s = validate(mlp_raw())
    exp = build(s)
    # adapter after Linear "1" (32 wide): down (4x32, 4), up (32x4, 32); head "3": (10x32, 10)
    assert [a.shape for a in exp.init_params] == [(4, 32), (4,), (32, 4), (32,), (10, 32), (10,)]
    assert not np.any(exp.init_params[2]) and not np.any(exp.init_params[3])  # up starts at zero
    m = init_model(exp.plan.model.spec, (64,), 10, 0)
    x = torch.rand(5, 64)
    with torch.no_grad():
        hooks = m.inner[1]._forward_hooks
        saved = dict(hooks)
        hooks.clear()
        plain = m(x)
        hooks.update(saved)
        torch.testing.assert_close(m(x), plain, rtol=0, atol=0)  # zero up: the pre-trained model

    trainable = sum(a.nbytes for a in exp.init_params)
    run_scenario(s, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    for row in rows:
        assert trainable < row["bytes_up"] / 2 < trainable + 200
    assert rows[-1]["test_acc"] > rows[0]["test_acc"] + 0.2  # adapter + head learn on a random base
    up = load_model(tmp_path / "run").state_dict()["1.adapter.up.weight"]
    assert float(up.abs().sum()) > 0  # the adapter trained


def test_adapter_section_is_required_and_targets_checked() -> None:
    with pytest.raises(ScenarioError, match="needs an adapter"):
        validate(mlp_raw(peft={"method": "adapter"}))
    with pytest.raises(ScenarioError, match="is for method adapter"):
        validate(mlp_raw(peft={"method": "bias", "adapter": {"targets": ["1"]}}))
    with pytest.raises(ScenarioError, match="did you mean '1'"):
        validate(mlp_raw(peft={"method": "adapter", "adapter": {"targets": ["11"]}}))
    with pytest.raises(ScenarioError, match="output width is unknown"):  # ReLU "2"
        validate(mlp_raw(peft={"method": "adapter", "adapter": {"targets": ["2"]}}))


def test_hf_adapter_run_exports_a_folder_that_loads_back(tiny_bert: Path, tmp_path: Path) -> None:
    data = token_data(tmp_path / "tokens.npz")
    raw = hf_raw(tiny_bert, data)
    raw["peft"] = {"method": "adapter", "adapter": {"dim": 8, "targets": ["attention.output.dense", "output.dense"]},
                   "train_also": ["classifier"]}
    s = validate(raw)
    exp = build(s)
    # 2 layers x 2 targets (hidden 32): down 8x32+8, up 32x8+32; classifier 3x32+3
    assert sum(a.size for a in exp.init_params) == 4 * (8 * 32 + 8 + 32 * 8 + 32) + 3 * 32 + 3
    run_scenario(s, tmp_path / "run")
    model = load_model(tmp_path / "run")
    x = torch.from_numpy(np.load(data)["x"][:7]).float()
    with torch.no_grad():
        want = model(x)

    assert main(["export", str(tmp_path / "run"), "--adapter", str(tmp_path / "ad")]) == 0
    from transformers import AutoModelForSequenceClassification

    from fedkit.peft.adapter import load_adapter

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3, local_files_only=True)
    adapted = load_adapter(base, tmp_path / "ad").eval()
    ids = x.long()
    with torch.no_grad():
        got = adapted(input_ids=ids, attention_mask=(ids != 0).long()).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_merged_export_of_adapters_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = mlp_raw(model={"name": "mlp", "hidden": [32]}, rounds=1)
    run_scenario(validate(raw), tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "cannot be folded into the base weights" in err and "--adapter" in err


def test_adapter_on_a_checkpoint_not_written_yet_is_a_data_problem(tmp_path: Path) -> None:
    from fedkit.scenario.check import DataError

    raw = mlp_raw(model={"name": "vit_tiny", "checkpoint": str(tmp_path / "none")},
                  peft={"method": "adapter", "adapter": {"dim": 4, "targets": ["mlp.fc2"]}, "train_also": ["head"]})
    s = validate(raw)  # validation, like a missing data file, leaves it to the run
    with pytest.raises(DataError, match="no checkpoint folder"):
        build(s)
