from __future__ import annotations

import numpy as np
import pytest

from fedkit import rng as frng
from fedkit.secure import field as fq


def test_for_clients_leaves_no_room_to_wrap() -> None:
    spec = fq.FieldSpec.for_clients(200, 8.0)
    assert spec.levels == (2**32 - 1) // 200
    assert 200 * spec.levels <= 2**32 - 1 < 201 * spec.levels
    assert spec.max_clients() == 200
    with pytest.raises(ValueError, match="overflows"):
        spec.check_clients(201)


def test_sum_of_quantised_decodes_within_n_steps() -> None:
    n, d = 50, 400
    spec = fq.FieldSpec.for_clients(n, 2.0)
    xs = [frng.rng(0, "x", 0, i).uniform(-2, 2, d) for i in range(n)]
    qs = [fq.quantize(spec, x, frng.rng(0, "q", 0, i)) for i, x in enumerate(xs)]
    total = np.zeros(d, spec.dtype)
    for q in qs:
        assert q.dtype == np.uint32 and q.max() <= spec.levels
        total += q
    got = fq.dequantize_sum(spec, total, n)
    assert np.max(np.abs(got - np.sum(xs, axis=0))) <= n * spec.step


def test_quantisation_is_unbiased_and_clips() -> None:
    spec = fq.FieldSpec(clip=1.0, levels=4)  # step 0.5
    x = np.full(20000, 0.1)
    q = fq.quantize(spec, x, frng.rng(1, "q"))
    decoded = q.astype(np.float64) * spec.step - spec.clip
    assert set(np.unique(decoded)) == {0.0, 0.5}
    assert abs(decoded.mean() - 0.1) < 0.01
    edge = fq.quantize(spec, np.array([-5.0, 5.0]), frng.rng(1, "q"))
    assert edge.tolist() == [0, 4]


def test_errors_are_named() -> None:
    with pytest.raises(ValueError, match="NaN"):
        fq.quantize(fq.FieldSpec(1.0, 10), np.array([np.nan]), frng.rng(0))
    with pytest.raises(ValueError, match="bits"):
        fq.FieldSpec(1.0, 10, bits=16)
    with pytest.raises(ValueError, match="clip"):
        fq.FieldSpec(0.0, 10)
    with pytest.raises(ValueError, match="uint32"):
        fq.dequantize_sum(fq.FieldSpec(1.0, 10), np.zeros(3, np.int64), 2)


def test_flatten_round_trip() -> None:
    like = [np.zeros((2, 3), np.float32), np.zeros(4, np.float64)]
    vec = np.arange(10.0)
    back = fq.unflatten(vec, like)
    assert [b.shape for b in back] == [(2, 3), (4,)] and back[0].dtype == np.float32
    assert np.array_equal(fq.flatten(back), vec)
    with pytest.raises(ValueError, match="10 values"):
        fq.unflatten(vec, like[:1])
