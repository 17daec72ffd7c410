"""The functional optimizer rules follow torch.optim step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkit.models import TrainConfig
from fedkit.split.optim import opt_init, opt_step


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(optimizer="sgd", lr=0.1),
        TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
        TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.01),
    ],
)
def test_rules_match_torch_optim(cfg: TrainConfig) -> None:
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 4, generator=gen)
    grads = [torch.randn(3, 4, generator=gen) for _ in range(4)]
    ref = w0.clone().requires_grad_(True)
    opt = (
        torch.optim.SGD([ref], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "sgd"
        else torch.optim.Adam([ref], lr=cfg.lr, weight_decay=cfg.weight_decay)
    )
    params = [w0.numpy().copy()]
    state = opt_init(cfg, params)
    for g in grads:
        ref.grad = g.clone()
        opt.step()
        before = params[0].copy()
        state, params = opt_step(cfg, state, [torch.from_numpy(params[0])], [g])
        assert not np.array_equal(before, params[0])
    np.testing.assert_allclose(params[0], ref.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; known: adam, sgd"):
        opt_init(TrainConfig.model_construct(optimizer="lamb"), [np.zeros(2, np.float32)])  # bypasses validation


def test_trainable_sees_a_parameter_frozen_after_the_first_call() -> None:
    from torch import nn

    from fedkit.split.optim import tensors, trainable

    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    assert trainable(m) == [True, True, True, True, False, False, False]
    m[0].bias.requires_grad_(False)
    assert trainable(m) == [True, False, True, True, False, False, False]
    ts = tensors(m, [t.detach().numpy().copy() for t in m.state_dict().values()])
    assert [t.requires_grad for t in ts.values()] == trainable(m)


def test_seeded_draws_are_keyed_and_leave_the_global_rng_alone() -> None:
    from fedkit.split.optim import seeded

    before = torch.random.get_rng_state()
    with seeded(0, "k", 1):
        a = torch.rand(3)
    with seeded(0, "k", 1):
        b = torch.rand(3)
    with seeded(0, "k", 2):
        c = torch.rand(3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), before)
