"""cut_table(): the numbers a user picks a cut by add up and match a real forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedkit.models import build_model
from fedkit.split.describe import cut_table, format_cut_table
from fedkit.split.partition import cut_names, split
from tests.split.conftest import Residual

CASES = [
    (build_model({"name": "logreg"}, (1, 8, 8), 10), (1, 8, 8), 10),
    (build_model({"name": "mlp"}, (64,), 10), (64,), 10),
    (build_model({"name": "cnn"}, (1, 8, 8), 10), (1, 8, 8), 10),
    (build_model({"name": "cnn"}, (64,), 10), (64,), 10),
    (Residual(), (6,), 3),
]
IDS = ["logreg", "mlp", "cnn", "cnn-flat", "user-fx"]


@pytest.mark.parametrize(("model", "shape", "classes"), CASES, ids=IDS)
def test_rows_add_up_and_match_a_real_forward(model: nn.Module, shape: tuple[int, ...], classes: int) -> None:
    rows = cut_table(model, shape, classes)
    assert [r.name for r in rows] == cut_names(model)
    whole = sum(p.numel() for p in model.parameters())
    x = torch.randn(3, *shape)
    for r in rows:
        assert r.client_params + r.server_params == whole == r.total_params, r.name
        act = split(model, r.name).client(x)
        assert r.activation_shape == tuple(act.shape[1:]), r.name
        assert r.activation_bytes_per_sample == 4 * act[0].numel()
        assert r.aux_params == act[0].numel() * classes + classes
        assert 0.0 <= r.client_share <= 1.0
        assert r.basis == "flops"
    shares = [r.client_share for r in rows]
    assert shares == sorted(shares), "client share must not decrease along the cut order"


def test_cnn_numbers() -> None:
    rows = {r.name: r for r in cut_table(build_model({"name": "cnn"}, (1, 8, 8), 10), (1, 8, 8), 10)}
    r = rows["4"]  # after the max-pool: both convolutions on the client
    assert (r.client_params, r.server_params, r.activation_shape) == (4800, 5130, (32, 4, 4))
    assert r.activation_bytes_per_sample == 2048
    assert 0.9 < r.client_share < 1.0  # the linear layer is the only FLOPs left on the server
    assert rows["0"].client_share < 0.1
    # forward FLOPs: conv1 2*64*16*9, conv2 2*64*32*16*9, fc 2*512*10 (pool/ReLU not counted)
    c1, c2, fc = 2 * 64 * 16 * 9, 2 * 64 * 32 * 16 * 9, 2 * 512 * 10
    assert r.client_share == pytest.approx((c1 + c2) / (c1 + c2 + fc))
    assert rows["0"].client_share == pytest.approx(c1 / (c1 + c2 + fc))
    assert rows["1"].activation_shape == (16, 8, 8) and r.basis == "flops"


def test_no_flops_falls_back_to_time_and_says_so() -> None:
    model = nn.Sequential(nn.Tanh(), nn.Sequential(nn.Sigmoid(), nn.ReLU()), nn.Tanh(), nn.Flatten())
    rows = cut_table(model, (4,), 4, repeat=3)
    assert rows and {r.basis for r in rows} == {"time"}
    shares = [r.client_share for r in rows]
    assert shares == sorted(shares) and all(0.0 <= s <= 1.0 for s in shares)
    same = {r.name: r.client_share for r in rows}
    assert same["1"] == same["1.1"]  # a Sequential and its last child cut at the same place
    assert "time" in format_cut_table(rows)


def test_format_lists_every_cut_aligned() -> None:
    rows = cut_table(build_model({"name": "mlp"}, (64,), 10), (64,), 10)
    text = format_cut_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[0] == "cut" and "FLOPs" in lines[0]
    table = lines[: 2 + len(rows)]
    assert len({len(line) for line in table}) == 1  # aligned columns
    for r, line in zip(rows, table[2:], strict=True):
        assert line.split()[0] == r.name and f"{r.client_params:,}" in line
    assert "no valid cut" in format_cut_table([])


def test_wrong_classes_or_shape_is_a_clear_error() -> None:
    model = build_model({"name": "mlp"}, (64,), 10)
    with pytest.raises(ValueError, match=r"7 logits per sample, got \(10,\)"):
        cut_table(model, (64,), 7)
    with pytest.raises(ValueError, match=r"inputs of shape \(5,\)"):
        cut_table(model, (5,), 10)
