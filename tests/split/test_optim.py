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


def test_live_parts_in_threads_over_one_shared_module_see_only_their_own_weights() -> None:
    """Each client thread runs the one architecture module with its own weights (a module being
    reparametrised by one thread used to serve those weights to another)."""
    import threading

    from torch import nn

    from fedkit.split.optim import LivePart

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten())
    params = [t.detach().numpy().copy() for t in m.state_dict().values()]
    x = torch.randn(16, 1, 8, 8)
    wrong = []

    def work(k: int) -> None:
        part = LivePart(m, TrainConfig(), [a * (1 + k) for a in params])
        want = part.forward(x)[0].detach()
        for _ in range(100):
            if not torch.equal(part.forward(x)[0].detach(), want):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert all(np.array_equal(a, t.detach().numpy()) for a, t in zip(params, m.state_dict().values(), strict=True))


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(optimizer="sgd", lr=0.1),
        TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
        TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.01),
    ],
)
def test_live_part_steps_in_place_exactly_as_the_value_rules(cfg: TrainConfig) -> None:
    from torch import nn

    from fedkit.split.optim import LivePart

    m = nn.Linear(4, 3)
    params = [t.detach().numpy().copy() for t in m.state_dict().values()]
    keep = [a.copy() for a in params]
    part, state, values = LivePart(m, cfg, params), opt_init(cfg, params), params
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(a.shape, generator=gen) for a in params]
        part.update(grads)
        state, values = opt_step(cfg, state, [torch.from_numpy(a) for a in values], grads)
    assert all(np.array_equal(a, b) for a, b in zip(part.params(), values, strict=True))
    assert all(np.array_equal(a, b) for ka, kb in zip(part.opt_state().buffers, state.buffers, strict=True)
               for a, b in zip(ka, kb, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(params, keep, strict=True))  # inputs never written


def test_stochastic_finds_the_parts_that_draw_randomness() -> None:
    from torch import fx, nn

    from fedkit.split.optim import stochastic

    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.randn_like(x)

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.dropout(self.fc(x), 0.1) + 1

    assert not stochastic(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2)))
    assert not stochastic(nn.Sequential(nn.LSTM(4, 4)))
    assert stochastic(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    assert stochastic(nn.LSTM(4, 4, num_layers=2, dropout=0.5))
    assert stochastic(nn.Sequential(nn.RReLU()))
    assert stochastic(Noisy())  # a forward outside torch.nn: assumed to draw
    assert stochastic(fx.symbolic_trace(Noisy()))  # traced: randn_like in the graph
    assert stochastic(fx.symbolic_trace(Plain()))  # traced: functional dropout
    assert not stochastic(fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU())))
