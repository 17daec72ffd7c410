"""Server optimizers: two-step sequences computed by hand, purity, dtypes and validation."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.aggregation import adagrad, adam, momentum, sgd, yogi
from fedkit.aggregation.base import ServerOpt


def arr(*values: float) -> list[np.ndarray]:
    return [np.array(values, dtype=np.float64)]


def run(opt: ServerOpt, x: list[np.ndarray], *deltas: list[float]) -> tuple[dict, list]:
    """Apply ``deltas`` in turn; return the final state and every intermediate x."""
    state, xs = opt.init(x), []
    for d in deltas:
        state, x = opt.apply(state, x, arr(*d))
        xs.append(x[0])
    return state, xs


def test_sgd() -> None:
    _, xs = run(sgd(lr=0.5), arr(1.0, 1.0), [2.0, -4.0])
    np.testing.assert_array_equal(xs[0], [2.0, -1.0])
    assert sgd().init(arr(1.0)) == {}


def test_momentum_two_steps() -> None:
    state, xs = run(momentum(lr=0.5, momentum=0.9), arr(0.0, 0.0), [1.0, 2.0], [1.0, 0.0])
    # v1 = [1, 2], x1 = 0.5 * v1;  v2 = 0.9 * [1, 2] + [1, 0] = [1.9, 1.8], x2 = x1 + 0.5 * v2
    np.testing.assert_allclose(xs[0], [0.5, 1.0], rtol=1e-15)
    np.testing.assert_allclose(xs[1], [1.45, 1.9], rtol=1e-15)
    np.testing.assert_allclose(state["v"][0], [1.9, 1.8], rtol=1e-15)


def test_nesterov_momentum_two_steps() -> None:
    opt = momentum(lr=0.5, momentum=0.9, nesterov=True)
    _, xs = run(opt, arr(0.0, 0.0), [1.0, 2.0], [1.0, 0.0])
    # step 1: v = [1, 2], direction = delta + 0.9 v = [1.9, 3.8], x1 = [0.95, 1.9]
    # step 2: v = [1.9, 1.8], direction = [1 + 1.71, 0 + 1.62], x2 = x1 + 0.5 * direction
    np.testing.assert_allclose(xs[0], [0.95, 1.9], rtol=1e-15)
    np.testing.assert_allclose(xs[1], [0.95 + 1.355, 1.9 + 0.81], rtol=1e-15)


def test_adam_two_steps() -> None:
    opt = adam(lr=0.5, beta1=0.5, beta2=0.75, tau=1.0)
    state, xs = run(opt, arr(0.0, 0.0), [2.0, -4.0], [1.0, 2.0])
    # step 1: m = 0.5 * [2, -4] = [1, -2]; v = 0.25 * [4, 16] = [1, 4]
    #         x1 = 0.5 * [1 / (1 + 1), -2 / (2 + 1)] = [0.25, -1/3]
    # step 2: m = 0.5 * [1, -2] + 0.5 * [1, 2] = [1, 0]; v = 0.75 * [1, 4] + 0.25 * [1, 4] = [1, 4]
    #         x2 = x1 + 0.5 * [1 / 2, 0 / 3] = [0.5, -1/3]
    np.testing.assert_allclose(xs[0], [0.25, -1.0 / 3.0], rtol=1e-15)
    np.testing.assert_allclose(xs[1], [0.5, -1.0 / 3.0], rtol=1e-15)
    np.testing.assert_array_equal(state["m"][0], [1.0, 0.0])
    np.testing.assert_array_equal(state["v"][0], [1.0, 4.0])


def test_adam_default_betas_no_bias_correction() -> None:
    _, xs = run(adam(lr=0.1, tau=1e-3), arr(0.0), [1.0])
    # m = 0.1, v = 0.01, x = 0.1 * 0.1 / (0.1 + 0.001) = 0.01 / 0.101
    np.testing.assert_allclose(xs[0], [0.099009900990099], rtol=1e-14)


def test_adam_v0() -> None:
    _, xs = run(adam(lr=1.0, beta1=0.5, beta2=0.75, tau=1.0, v0=1.0), arr(0.0), [1.0])
    # m = 0.5, v = 0.75 * 1 + 0.25 * 1 = 1, x = 0.5 / (1 + 1)
    np.testing.assert_array_equal(xs[0], [0.25])


def test_yogi_two_steps() -> None:
    opt = yogi(lr=0.5, beta1=0.5, beta2=0.75, tau=1.0)
    state, xs = run(opt, arr(0.0, 0.0), [2.0, -4.0], [3.0, 1.0])
    # step 1 (v = 0): v = 0 - 0.25 * [4, 16] * sign(-[4, 16]) = [1, 4]; m = [1, -2]
    #         x1 = [0.25, -1/3] as for Adam
    # step 2: delta^2 = [9, 1]; sign(v - delta^2) = [-1, +1]
    #         v = [1 + 0.25 * 9, 4 - 0.25 * 1] = [3.25, 3.75]   (Adam: [3, 3.25])
    #         m = 0.5 * [1, -2] + 0.5 * [3, 1] = [2, -0.5]
    np.testing.assert_allclose(xs[0], [0.25, -1.0 / 3.0], rtol=1e-15)
    np.testing.assert_array_equal(state["v"][0], [3.25, 3.75])
    np.testing.assert_array_equal(state["m"][0], [2.0, -0.5])
    expected = [0.25 + 0.5 * 2.0 / (np.sqrt(3.25) + 1.0), -1.0 / 3.0 - 0.25 / (np.sqrt(3.75) + 1.0)]
    np.testing.assert_allclose(xs[1], expected, rtol=1e-15)
    np.testing.assert_allclose(xs[1], [0.6067891723, -0.4184689400], rtol=1e-9)


def test_adagrad_two_steps() -> None:
    state, xs = run(adagrad(lr=1.0, tau=1.0), arr(0.0, 0.0), [3.0, -4.0], [4.0, 3.0])
    # beta1 = 0 so m = delta.  step 1: v = [9, 16], x1 = [3 / (3 + 1), -4 / (4 + 1)]
    # step 2: v = [25, 25], x2 = x1 + [4 / 6, 3 / 6]
    np.testing.assert_allclose(xs[0], [0.75, -0.8], rtol=1e-15)
    np.testing.assert_allclose(xs[1], [0.75 + 4.0 / 6.0, -0.3], rtol=1e-15)
    np.testing.assert_array_equal(state["v"][0], [25.0, 25.0])


def test_adagrad_with_paper_momentum() -> None:
    _, xs = run(adagrad(lr=1.0, beta1=0.5, tau=1.0), arr(0.0), [3.0])
    np.testing.assert_array_equal(xs[0], [0.375])  # m = 1.5, v = 9, 1.5 / (3 + 1)


@pytest.mark.parametrize(
    "opt",
    [sgd(0.7), momentum(0.7, 0.9, True), adam(0.1), yogi(0.1), adagrad(0.1)],
    ids=["sgd", "momentum", "adam", "yogi", "adagrad"],
)
def test_pure_and_dtype_preserving(opt) -> None:
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    delta = [rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    state = opt.init(x)
    state, x = opt.apply(state, x, delta)  # non-trivial state
    saved = (
        {k: [a.copy() for a in v] for k, v in state.items()},
        [a.copy() for a in x],
        [a.copy() for a in delta],
    )
    new_state, new_x = opt.apply(state, x, delta)
    for k, v in state.items():  # old state, params and delta are untouched
        for a, s in zip(v, saved[0][k], strict=True):
            assert a.tobytes() == s.tobytes()
    for a, s in zip(x + delta, saved[1] + saved[2], strict=True):
        assert a.tobytes() == s.tobytes()
    olds = [a for v in state.values() for a in v] + x + delta
    for a in [a for v in new_state.values() for a in v] + new_x:
        assert a.dtype == np.float32
        assert not any(np.shares_memory(a, o) for o in olds)
    again_state, again_x = opt.apply(state, x, delta)  # deterministic
    for a, b in zip(new_x, again_x, strict=True):
        assert a.tobytes() == b.tobytes()


def test_integer_params_are_rounded() -> None:
    _, x = sgd(1.0).apply({}, [np.array([1, 2])], [np.array([0.6, -0.4])])
    np.testing.assert_array_equal(x[0], [2, 2])
    assert np.issubdtype(x[0].dtype, np.integer)
    assert adam().init([np.array([1, 2])])["m"][0].dtype == np.float64


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sgd(0.0), "lr"),
        (lambda: sgd("1"), "lr must be a number"),
        (lambda: momentum(momentum=1.0), "momentum"),
        (lambda: momentum(nesterov=1), "nesterov must be a bool"),
        (lambda: adam(beta1=1.0), "beta1"),
        (lambda: adam(beta2=-0.1), "beta2"),
        (lambda: yogi(tau=0.0), "tau"),
        (lambda: adagrad(v0=-1.0), "v0"),
        (lambda: adam(lr=float("nan")), "lr"),
    ],
)
def test_invalid_hyperparameters(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_shape_and_state_errors() -> None:
    x = arr(0.0, 0.0)
    with pytest.raises(ValueError, match=r"delta: array 0 has shape \(3,\)"):
        sgd().apply({}, x, arr(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="lacks 'v'"):
        adam().apply({"m": [np.zeros(2)]}, x, arr(1.0, 2.0))
    with pytest.raises(ValueError, match="optimizer state 'v'"):
        momentum().apply({"v": [np.zeros(3)]}, x, arr(1.0, 2.0))
