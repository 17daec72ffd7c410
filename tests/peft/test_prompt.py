"""Prompt tuning under peft: only a pre-trained ViT's prompt tokens and its head train and travel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedkit.experiment import run_scenario
from fedkit.models import build_model
from fedkit.models.checkpoint import save_checkpoint
from fedkit.report.run_dir import RunDir
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import build

VIT = {"name": "vit_tiny", "dim": 16, "depth": 1, "heads": 2}


def raw(ckpt: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "prompt-vit", "seed": 1, "rounds": 2,
        "clients": {"count": 2},
        "data": {"dataset": {"name": "digits"}, "partition": {"name": "iid"}},
        "model": {**VIT, "prompt_tokens": 4, "checkpoint": str(ckpt)},
        "train": {"steps": 3, "batch_size": 16, "lr": 0.05},
        "peft": {"method": "prompt", "train_also": ["head"]},
        "output": {"plot": False},
    }
    return s | over


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    save_checkpoint(build_model(VIT, (64,), 10), VIT, (64,), 10, tmp_path / "vit")
    return tmp_path / "vit"


def test_only_prompts_and_head_travel(ckpt: Path, tmp_path: Path) -> None:
    s = validate(raw(ckpt))
    exp = build(s)
    shapes = [a.shape for a in exp.init_params]
    assert shapes == [(1, 4, 16), (10, 16), (10,)]  # the prompt tokens, head weight, head bias
    run_scenario(s, tmp_path / "run")
    final = RunDir(tmp_path / "run", resume=True).read_checkpoint()
    assert final is not None and final.round == 2
    assert all(not np.array_equal(a, b) for a, b in zip(final.params, exp.init_params, strict=True))


def test_prompt_method_needs_prompt_tokens(ckpt: Path) -> None:
    with pytest.raises(ScenarioError, match="no prompt tokens"):
        validate(raw(ckpt, model={**VIT, "checkpoint": str(ckpt)}))


def test_lora_aggregation_variants_are_for_lora_only(ckpt: Path) -> None:
    with pytest.raises(ScenarioError, match="for LoRA factors"):
        validate(raw(ckpt, peft={"method": "prompt", "train_also": ["head"], "aggregation": "ffa"}))
