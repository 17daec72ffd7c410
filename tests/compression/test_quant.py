import numpy as np
import pytest

from fedkit.compression import make
from fedkit.compression.quant import quantize


@pytest.mark.parametrize("bits", range(1, 9))
def test_values_on_the_grid_are_exact(bits, roundtrip) -> None:
    step = np.float32(2.0**-3)
    codes = np.random.default_rng(bits).integers(0, 1 << bits, 500)
    codes[:2] = [0, (1 << bits) - 1]  # min and max fix the grid
    x = np.float32(-1) + codes.astype(np.float32) * step
    for stochastic in (False, True):
        y, _ = roundtrip(f"quant(bits={bits},stochastic={stochastic})", [x])
        np.testing.assert_array_equal(y[0], x)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_error_bound_and_wire_size(bits, roundtrip) -> None:
    x = np.random.default_rng(0).standard_normal(40_000).astype(np.float32)
    step = (x.max() - x.min()) / ((1 << bits) - 1)
    y, enc = roundtrip(f"quant(bits={bits})", [x])
    assert np.abs(y[0] - x).max() <= step / 2 * (1 + 1e-4)
    ys, _ = roundtrip(f"quant(bits={bits},stochastic=True)", [x])
    assert np.abs(ys[0] - x).max() <= step * (1 + 1e-4)
    payload = x.size * bits / 8
    assert payload <= len(enc.data) <= payload + 16  # + min, step, header, padding
    assert enc.nbytes <= payload + 16 + 6 + len(enc.codec)


def test_stochastic_rounding_is_unbiased() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 200).astype(np.float32)
    x[:2] = [-1, 1]
    codec = make("quant(bits=2,stochastic=True)")
    rng = np.random.default_rng(1)
    errs = []
    for draws in (100, 1600):
        mean = np.mean([codec.decode(codec.encode(None, [x], rng)[1])[0] for _ in range(draws)], 0)
        errs.append(np.abs(mean - x).max())
        var = (2 / 3) ** 2 / 4  # per-coordinate variance <= step^2 / 4
        assert np.sum((mean - x) ** 2) <= 3 * x.size * var / draws
    assert errs[1] < errs[0]


def test_deterministic_rounding_ignores_rng() -> None:
    x = [np.linspace(-3, 7, 101, dtype=np.float32)]
    codec = make("quant(bits=4)")
    a = codec.encode(None, x, np.random.default_rng(1))[1]
    b = codec.encode(None, x, np.random.default_rng(2))[1]
    assert a == b


def test_constant_and_empty_groups() -> None:
    lo, step, codes = quantize(np.full(10, 2.5, np.float32), 4)
    assert lo == 2.5 and step == 0 and not codes.any()
    assert quantize(np.zeros(0, np.float32), 4)[2].size == 0


def test_per_tensor_bits(roundtrip, model) -> None:
    y, enc = roundtrip("quant(bits=[1,8,2,8])", model)
    one_bit = np.unique(y[0])
    assert one_bit.size <= 2
    assert np.abs(y[1] - model[1]).max() <= (np.ptp(model[1]) / 255) / 2 * 1.001
