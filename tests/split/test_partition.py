"""split(): parts compose to the original forward and gradients; bad cuts are refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedkit.models import build_model
from fedkit.split.partition import cut_names, split
from tests.split.conftest import Residual


def _grads(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = module(x)
    grads = torch.autograd.grad((out**2).sum(), list(module.parameters()))
    return out.detach(), list(grads)


CASES = [
    ("logreg", (1, 8, 8), ["0"]),
    ("mlp", (64,), ["0", "1", "2"]),
    ("cnn", (1, 8, 8), ["0", "1", "3", "4", "5"]),
]


@pytest.mark.parametrize(("name", "shape", "cuts"), CASES)
def test_reference_models_split_exactly(name: str, shape: tuple[int, ...], cuts: list[str]) -> None:
    torch.manual_seed(0)
    model = build_model({"name": name}, shape, 10)
    x = torch.randn(5, *shape)
    want, want_g = _grads(model, x)
    for cut in cuts:
        sm = split(model, cut)
        parts = nn.Sequential(*sm.parts)
        got, got_g = _grads(parts, x)
        assert torch.equal(got, want), cut
        assert len(got_g) == len(want_g)
        for a, b in zip(got_g, want_g, strict=True):
            assert torch.allclose(a, b, atol=1e-6), cut


def test_user_model_is_untouched_and_parts_own_weights() -> None:
    model = build_model({"name": "mlp"}, (4,), 2)
    before = [p.detach().clone() for p in model.parameters()]
    sm = split(model, "1")
    with torch.no_grad():
        for p in sm.client.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_nested_sequential_cut_at_child_or_block() -> None:
    model = nn.Sequential(
        nn.Sequential(nn.Linear(4, 5), nn.ReLU()), nn.Sequential(nn.Linear(5, 3), nn.Tanh()), nn.Linear(3, 2)
    )
    assert cut_names(model) == ["0.0", "0", "0.1", "1.0", "1", "1.1"]
    x = torch.randn(3, 4)
    for cut in ("0", "0.0", "1.1"):
        assert torch.equal(split(model, cut)(x), model(x))
    with pytest.raises(ValueError, match="valid cuts"):
        split(model, "2")  # the last module leaves nothing for the server


def test_traced_model_with_inner_skip_connection() -> None:
    torch.manual_seed(1)
    model = Residual()
    assert cut_names(model) == ["stem", "act", "block"]  # inside the block the skip crosses every cut
    x = torch.randn(4, 6)
    want, want_g = _grads(model, x)
    for cut in ("stem", "act", "block", ["stem", "block"]):
        sm = split(model, cut)
        assert all(isinstance(m, torch.fx.GraphModule) for m in sm.parts)
        got, got_g = _grads(nn.Sequential(*sm.parts), x)
        assert torch.allclose(got, want, atol=1e-6)
        for a, b in zip(got_g, want_g, strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_cut_crossed_by_skip_names_the_edge() -> None:
    with pytest.raises(ValueError, match=r"'block\.fc1' is crossed by 2 values.*act -> add") as err:
        split(Residual(), "block.fc1")
    assert "valid cuts: stem, act, block" in str(err.value)


def test_unknown_cut_lists_names_and_suggests() -> None:
    model = build_model({"name": "cnn"}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"unknown cut 'features\.2'.*valid cuts: 0, 1, 2, 3, 4, 5"):
        split(model, "features.2")
    with pytest.raises(ValueError, match="did you mean 'stem'"):
        split(Residual(), "stme")


def test_two_cuts_give_head_body_tail() -> None:
    model = build_model({"name": "cnn"}, (1, 8, 8), 10)
    sm = split(model, ["1", "4"])
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(sm.tail(sm.body(sm.head(x))), model(x))
    with pytest.raises(ValueError, match="forward order"):
        split(model, ["4", "1"])
    with pytest.raises(ValueError, match="client exists"):
        _ = sm.client
