from __future__ import annotations

import numpy as np
import torch

from fedkit.data import load_dataset
from fedkit.models import TrainConfig, build_model, evaluate, get_params, init_model, train
from fedkit.rng import rng


def test_local_training_learns_digits() -> None:
    ds = load_dataset("digits", 0)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    m = init_model({"name": "mlp"}, ds.input_shape, 10, seed=0)
    p0 = get_params(m)
    p, loss, steps = train(m, p0, x, y, TrainConfig(epochs=5, batch_size=32, lr=0.2), rng(0, "t"))
    assert steps == 5 * -(-len(y) // 32)
    assert evaluate(m, p, xt, yt)[1] > 0.9 > evaluate(m, p0, xt, yt)[1]


def test_steps_mode_takes_exactly_that_many_steps() -> None:
    m = build_model({"name": "logreg"}, (4,), 2)
    x, y = torch.randn(7, 4), torch.randint(0, 2, (7,))
    _, _, steps = train(m, get_params(m), x, y, TrainConfig(steps=11, batch_size=3), rng(0))
    assert steps == 11


def test_training_is_deterministic_given_the_key() -> None:
    m = build_model({"name": "mlp", "hidden": [8]}, (4,), 2)
    x, y = torch.randn(50, 4), torch.randint(0, 2, (50,))
    p0 = get_params(m)
    a = train(m, p0, x, y, TrainConfig(batch_size=5), rng(1, "a"))[0]
    b = train(m, p0, x, y, TrainConfig(batch_size=5), rng(1, "a"))[0]
    c = train(m, p0, x, y, TrainConfig(batch_size=5), rng(1, "b"))[0]
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_fedprox_term_pulls_towards_the_global_model() -> None:
    m = build_model({"name": "logreg"}, (4,), 2)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    p0 = get_params(m)
    free = train(m, p0, x, y, TrainConfig(epochs=20, batch_size=8, lr=0.1), rng(0))[0]
    prox = train(m, p0, x, y, TrainConfig(epochs=20, batch_size=8, lr=0.1, mu=2.0), rng(0))[0]
    dist = lambda p: sum(float(((a - b) ** 2).sum()) for a, b in zip(p, p0, strict=True))  # noqa: E731
    assert dist(prox) < 0.5 * dist(free)
