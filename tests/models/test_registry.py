from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedkit.models import build_model, get_params, init_model, set_params


def tiny_net(input_shape, num_classes, width: int = 4) -> nn.Module:
    """A user's own factory, reached by import path."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.Linear(width, num_classes))


@pytest.mark.parametrize("spec", [{"name": "logreg"}, {"name": "mlp", "hidden": [8, 8]}, {"name": "cnn"}])
def test_reference_models_fit_digits_shapes(spec: dict) -> None:
    m = build_model(spec, (64,), 10)
    assert m(torch.zeros(5, 64)).shape == (5, 10)
    assert build_model(spec, (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_custom_factory_by_import_path() -> None:
    m = build_model({"name": "tests.models.test_registry:tiny_net", "width": 3}, (6,), 2)
    assert [tuple(p.shape) for p in m.parameters()] == [(3, 6), (3,), (2, 3), (2,)]


def test_bad_model_names_are_explained() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model({"name": "nope"}, (4,), 2)
    with pytest.raises(ValueError, match="cannot import model factory"):
        build_model({"name": "no_such_pkg:fn"}, (4,), 2)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = get_params(init_model({"name": "mlp"}, (64,), 10, seed=7))
    assert torch.rand(1) == before  # global RNG stream unchanged by init_model
    b = get_params(init_model({"name": "mlp"}, (64,), 10, seed=7))
    c = get_params(init_model({"name": "mlp"}, (64,), 10, seed=8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_set_params_checks_shapes() -> None:
    m = build_model({"name": "logreg"}, (4,), 3)
    with pytest.raises(ValueError, match="shape"):
        set_params(m, [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="2 tensors"):
        set_params(m, [np.zeros((3, 4), np.float32)])


def test_bow_averages_non_pad_tokens_and_hashes_large_ids() -> None:
    m = build_model({"name": "bow", "buckets": 16, "dim": 4}, (6,), 3)
    assert [tuple(p.shape) for p in m.parameters()] == [(16, 4), (3, 4), (3,)]
    x = torch.tensor([[5.0, 7.0, 0.0, 0.0, 0.0, 0.0], [5.0, 7.0, 7.0, 5.0, 0.0, 0.0]])  # float ids, 0 = pad
    out = m(x)
    assert out.shape == (2, 3) and torch.allclose(out[0], out[1])  # padding and repeats don't matter
    assert torch.allclose(m(torch.tensor([[21.0, 0.0, 0.0, 0.0, 0.0, 0.0]])), m(torch.tensor([[5.0] + [0.0] * 5])))
    with pytest.raises(ValueError, match=r"bow needs token-id inputs of shape \(max_length,\)"):
        build_model({"name": "bow"}, (1, 8, 8), 2)
