"""A learned bottleneck shrinks activation bytes by C/k and the model still learns."""

from __future__ import annotations

import pytest
import torch

from fedkit.models import init_model
from fedkit.split.bottleneck import with_bottleneck
from fedkit.split.partition import split

from .test_schemes import SHAPE, TR, accuracy, digits, make_setup, run


def test_bottleneck_shrinks_bytes_by_the_factor_and_learns() -> None:
    model = init_model({"name": "cnn"}, SHAPE, 10, seed=1)
    setup = make_setup("splitfed_v2", model, "4", SHAPE, 10, bottleneck=4)  # 32 channels -> 4
    assert setup.activation_shape == (4, 4, 4)
    # the extra layers diverge at the lr=0.3 the plain CNN takes, and at 0.2 the result swings
    # with the kernels' rounding (0.68 with one torch thread, 0.82 with two): 0.1 for 3 rounds
    # reaches 0.87 with either
    tr = TR.model_copy(update={"lr": 0.1})
    setup, cp, ss, ms = run("splitfed_v2", 3, tr, setup=setup)
    _, _, _, plain = run("splitfed_v2", 1, tr.model_copy(update={"epochs": 1}))  # the same batches, once
    ratio = 2 * plain[0]["bytes_activations_up"] / ms[0]["bytes_activations_up"]
    assert 7.5 < ratio <= 8.0  # 8x fewer floats; frame headers are the same size
    assert ms[0]["bytes_gradients_down"] == ms[0]["bytes_activations_up"]
    _, xt, yt = digits()
    assert accuracy(setup, cp, ss.shared.params, xt, yt) > 0.8


def test_bottleneck_composes_to_the_forward_and_refuses_bad_dims() -> None:
    sm = split(init_model({"name": "mlp", "hidden": [16]}, (64,), 10, seed=0), "2")
    bn = with_bottleneck(sm, (64,), 4)
    x = torch.randn(3, 64)
    assert bn.parts[0](x).shape == (3, 4) and bn(x).shape == (3, 10)
    with pytest.raises(ValueError, match="does not shrink"):
        with_bottleneck(sm, (64,), 16)
    with pytest.raises(ValueError, match="positive int"):
        with_bottleneck(sm, (64,), 0)
