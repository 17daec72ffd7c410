"""``train.device``: cpu and auto give bit-identical runs on a machine without a GPU (nothing
moves), cuda there is an error naming the problem; a fine-tuning model moves as a whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedkit.experiment import run_scenario
from fedkit.models.train import resolve_device
from fedkit.report.run_dir import load_params, read_metrics
from fedkit.scenario import validate

from .test_adapter import mlp_raw

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")


@no_gpu
def test_cpu_and_auto_are_bit_identical_without_a_gpu(tmp_path: Path) -> None:
    runs = {}
    for device in ("cpu", "auto"):
        raw = mlp_raw(rounds=2, train={"steps": 3, "batch_size": 16, "lr": 0.01, "optimizer": "adam", "device": device},
                      evaluation={"federated": True})
        run_scenario(validate(raw), tmp_path / device)
        runs[device] = (load_params(tmp_path / device / "params.npz")[0], read_metrics(tmp_path / device))
    (pa, ma), (pb, mb) = runs["cpu"], runs["auto"]
    assert all(np.array_equal(a, b) for a, b in zip(pa, pb, strict=True))
    keys = ("test_loss", "test_acc", "fed_loss", "train_loss")
    assert [[r.get(k) for k in keys] for r in ma] == [[r.get(k) for k in keys] for r in mb]


@no_gpu
def test_cuda_without_a_gpu_is_an_error_naming_the_problem(tmp_path: Path) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"train.device cuda: no CUDA GPU is visible here .*use device: auto or cpu"):
        resolve_device("cuda")
    raw = mlp_raw(rounds=1, train={"steps": 1, "device": "cuda"})
    with pytest.raises(Exception, match="no CUDA GPU is visible"):
        run_scenario(validate(raw), tmp_path / "run")


def test_unknown_device_is_a_validation_error() -> None:
    from fedkit.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="device"):
        validate(mlp_raw(train={"device": "tpu"}))


def test_trainable_moves_with_its_model() -> None:
    from fedkit.peft.model import build

    m = build((64,), 10, {"name": "mlp", "hidden": [32]}, {"method": "adapter", "adapter": {"dim": 4, "targets": ["1"]}},
              cache=False)
    before = [id(p) for p in m.parameters()]
    m.to(torch.float64)  # any conversion reaches the frozen base and keeps the trainable tensors' identity
    assert all(p.dtype == torch.float64 for p in m.inner.parameters())
    assert [id(p) for p in m.parameters()] == before
    assert m(torch.zeros(2, 64, dtype=torch.float64)).dtype == torch.float64


def test_paths_that_train_on_cpu_only_refuse_another_device() -> None:
    from fedkit.scenario import ScenarioError

    raw = mlp_raw(train={"device": "auto"}, execution={"kind": "stacked"})
    del raw["peft"]
    with pytest.raises(ScenarioError, match="train on CPU only"):
        validate(raw)
