from __future__ import annotations

import numpy as np
import torch

from fedkit.data import load_dataset
from fedkit.models import (
    LocalData,
    TrainConfig,
    build_model,
    evaluate,
    get_params,
    init_model,
    keyed_torch,
    set_params,
    sgd_train,
)
from fedkit.rng import rng
from fedkit.types import Params


def _train(m: torch.nn.Module, p0: Params, data: LocalData, cfg: TrainConfig, gen) -> tuple[Params, dict]:
    set_params(m, p0)
    metrics = sgd_train(m, data, cfg, gen)
    return get_params(m), metrics


def test_local_training_learns_digits() -> None:
    ds = load_dataset("digits", 0)
    data = LocalData(torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train))
    test = LocalData(torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test))
    m = init_model({"name": "mlp"}, ds.input_shape, 10, seed=0)
    p0 = get_params(m)
    before = evaluate(m, test)["accuracy"]
    _, metrics = _train(m, p0, data, TrainConfig(epochs=5, batch_size=32, lr=0.2), rng(0, "t"))
    assert metrics["steps"] == 5 * -(-len(data) // 32)
    assert evaluate(m, test)["accuracy"] > 0.9 > before


def test_steps_mode_takes_exactly_that_many_steps() -> None:
    m = build_model({"name": "logreg"}, (4,), 2)
    data = LocalData(torch.randn(7, 4), torch.randint(0, 2, (7,)))
    _, metrics = _train(m, get_params(m), data, TrainConfig(steps=11, batch_size=3), rng(0))
    assert metrics["steps"] == 11


def test_training_is_deterministic_given_the_key() -> None:
    m = build_model({"name": "mlp", "hidden": [8]}, (4,), 2)
    data = LocalData(torch.randn(50, 4), torch.randint(0, 2, (50,)))
    p0 = get_params(m)
    a = _train(m, p0, data, TrainConfig(batch_size=5), rng(1, "a"))[0]
    b = _train(m, p0, data, TrainConfig(batch_size=5), rng(1, "a"))[0]
    c = _train(m, p0, data, TrainConfig(batch_size=5), rng(1, "b"))[0]
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_dropout_draws_are_keyed_not_global() -> None:
    """With keyed_torch, dropout gives the same result whatever torch's global state is."""
    m = build_model({"name": "mlp", "hidden": [32], "dropout": 0.5}, (4,), 2)
    data = LocalData(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    p0 = get_params(m)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with keyed_torch(7):
            runs.append(_train(m, p0, data, TrainConfig(batch_size=8), rng(0))[0])
    assert all(np.array_equal(u, v) for u, v in zip(*runs, strict=True))
    with keyed_torch(8):
        other = _train(m, p0, data, TrainConfig(batch_size=8), rng(0))[0]
    assert not all(np.array_equal(u, v) for u, v in zip(runs[0], other, strict=True))


def test_unknown_training_setting_is_an_error() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="lrr"):
        TrainConfig.model_validate({"lrr": 0.1})


def test_fedprox_term_pulls_towards_the_global_model() -> None:
    m = build_model({"name": "logreg"}, (4,), 2)
    data = LocalData(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    p0 = get_params(m)
    free = _train(m, p0, data, TrainConfig(epochs=20, batch_size=8, lr=0.1), rng(0))[0]
    prox = _train(m, p0, data, TrainConfig(epochs=20, batch_size=8, lr=0.1, mu=2.0), rng(0))[0]
    dist = lambda p: sum(float(((a - b) ** 2).sum()) for a, b in zip(p, p0, strict=True))  # noqa: E731
    assert dist(prox) < 0.5 * dist(free)


def test_batch_plan_is_one_shuffle_per_epoch_in_batches() -> None:
    from fedkit.models.train import batch_plan, batches

    idx, sizes = batch_plan(23, TrainConfig(epochs=2, batch_size=10), np.random.default_rng(1))
    assert sizes.tolist() == [10, 10, 3, 10, 10, 3]
    gen = np.random.default_rng(1)
    assert idx.tolist() == [*gen.permutation(23), *gen.permutation(23)]
    tensors = batches(23, TrainConfig(epochs=2, batch_size=10), np.random.default_rng(1))
    assert [t.tolist() for t in tensors] == [c.tolist() for c in np.split(idx, np.cumsum(sizes)[:-1])]
    _, sizes = batch_plan(23, TrainConfig(steps=7, batch_size=10), np.random.default_rng(1))
    assert sizes.tolist() == [10, 10, 3, 10, 10, 3, 10]
    assert batch_plan(0, TrainConfig(steps=3), np.random.default_rng(1))[1].tolist() == []  # no hang
