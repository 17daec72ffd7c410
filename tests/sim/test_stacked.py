"""Stacked execution: the same sampled clients, batches and update chain as sequential, with
updates equal to float tolerance for logreg, MLP and CNN; anything else falls back, logged."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from torch import nn

from fedkit.models import TrainConfig
from fedkit.sim.stacked import program_for
from tests.conftest import tiny_raw
from tests.sim.executors import run_kind

STACKED = {"kind": "stacked"}
TOL = {"atol": 1e-5, "rtol": 1e-4}  # float32 kernels in another order; see fedkit/sim/stacked.py


def _compare(raw: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray], list[dict], list[dict]]:
    seq, seq_rows = run_kind(raw)
    st, st_rows = run_kind(raw, STACKED)
    return seq, st, seq_rows, st_rows


def _close(seq_rows: list[dict], st_rows: list[dict]) -> None:
    assert [(r["round"], r["client"], r["status"]) for r in seq_rows] == [
        (r["round"], r["client"], r["status"]) for r in st_rows
    ]
    for a, b in zip(seq_rows, st_rows, strict=True):
        if a["kind"] == "train":
            assert a["steps"] == b["steps"] and a["num_examples"] == b["num_examples"]
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


@pytest.mark.parametrize(
    "over",
    [
        {"model": {"name": "logreg"}},
        {"model": {"name": "mlp", "hidden": [16, 8]}, "train": {"epochs": 2, "batch_size": 16, "lr": 0.1,
                                                                  "momentum": 0.9, "weight_decay": 1e-3}},
        {"model": {"name": "cnn", "channels": [4, 8]}},
        {"strategy": {"name": "fedprox", "mu": 1.0}},
    ],
    ids=["logreg", "mlp-momentum-wd", "cnn", "fedprox"],
)
def test_stacked_updates_equal_sequential_to_tolerance(over: dict[str, Any]) -> None:
    seq, st, seq_rows, st_rows = _compare(tiny_raw(rounds=2, **over))
    for a, b in zip(seq, st, strict=True):
        np.testing.assert_allclose(b, a, **TOL)
    _close(seq_rows, st_rows)


def test_stacked_keeps_each_clients_codec_and_downlink_state() -> None:
    raw = tiny_raw(rounds=3, clients__per_round={"fraction": 0.67}, evaluation={"federated": True},
                   compression={"uplink": "ef:topk(ratio=0.2)", "downlink_mode": "delta"})
    seq, st, seq_rows, st_rows = _compare(raw)
    for a, b in zip(seq, st, strict=True):
        np.testing.assert_allclose(b, a, **TOL)
    _close(seq_rows, st_rows)


def test_unsupported_training_falls_back_to_sequential_with_a_logged_reason(caplog: pytest.LogCaptureFixture) -> None:
    raw = tiny_raw(rounds=2, model={"name": "mlp", "hidden": [16], "dropout": 0.2})
    with caplog.at_level(logging.WARNING, logger="fedkit.stacked"):
        seq, st, _, _ = _compare(raw)
    assert all(np.array_equal(a, b) for a, b in zip(seq, st, strict=True))  # it ran sequentially
    reasons = [r.getMessage() for r in caplog.records if r.name == "fedkit.stacked"]
    assert len(reasons) == 1 and "dropout" in reasons[0]


def test_reasons_name_what_stacked_does_not_support() -> None:
    sgd = TrainConfig()
    assert callable(program_for(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sgd))
    assert "adam" in str(program_for(nn.Sequential(nn.Linear(4, 2)), TrainConfig(optimizer="adam")))
    assert "buffers" in str(program_for(nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2)), sgd))
    assert "LSTM" in str(program_for(nn.Sequential(nn.LSTM(4, 2)), sgd))
    assert "custom training function" in str(program_for(nn.Sequential(nn.Linear(4, 2)), TrainConfig(fn="m:f")))


def test_only_relu_mlps_take_the_hand_written_path() -> None:
    from fedkit.sim.stacked import _train_mlp, _train_vmap

    sgd = TrainConfig()
    flat = nn.Flatten()
    assert program_for(nn.Sequential(flat, nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), sgd) is _train_mlp
    assert program_for(nn.Sequential(flat, nn.Linear(4, 3), nn.Linear(3, 2)), sgd) is _train_vmap
    assert program_for(nn.Sequential(flat, nn.ReLU(), nn.Linear(4, 2)), sgd) is _train_vmap
    assert program_for(nn.Sequential(flat, nn.Linear(4, 2, bias=False)), sgd) is _train_vmap
    assert "float32" in str(program_for(nn.Sequential(flat, nn.Linear(4, 2)).double(), sgd))
