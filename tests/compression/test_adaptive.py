from __future__ import annotations

import tempfile

import numpy as np
import pytest

from fedkit.compression import decode, make
from fedkit.experiment import run_scenario
from fedkit.scenario import validate
from tests.conftest import tiny_raw


def _update() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    full = g.normal(size=(48, 40)).astype(np.float32)  # flat spectrum: rank buys accuracy
    rank1 = np.outer(g.normal(size=48), g.normal(size=40)).astype(np.float32)  # rank 1 is exact
    return [full, g.normal(size=40).astype(np.float32), rank1]


def _sq_err(x: list[np.ndarray], y: list[np.ndarray]) -> float:
    return sum(float(((a - b) ** 2).sum()) for a, b in zip(x, y, strict=True))


def test_spec_round_trips_and_payload_decodes_without_state() -> None:
    c = make("ef:adaptive(family=powersgd, candidates=[1,2,4], uniform=2, every=3)")
    assert make(c.spec).spec == c.spec == "ef:adaptive(family=powersgd,candidates=[1,2,4],uniform=2,every=3)"
    x = _update()
    _, enc = c.encode(c.init(x), x, np.random.default_rng(0))
    assert enc.codec.startswith("powersgd(rank=[")  # the concrete per-layer choice travels
    assert [a.shape for a in decode(enc)] == [a.shape for a in x]


def test_layerwise_choice_is_no_larger_and_no_worse_than_uniform() -> None:
    x = _update()
    uniform = make("powersgd(rank=4)")
    _, u = uniform.encode(uniform.init(x), x, np.random.default_rng(0))
    a = make("adaptive(family=powersgd,candidates=[1,2,4,8],uniform=4)")
    _, e = a.encode(a.init(x), x, np.random.default_rng(0))
    ranks = e.codec[e.codec.index("[") + 1 : e.codec.index("]")].split(",")
    assert ranks[2] == "1"  # the exactly rank-1 layer needs no more
    assert len(e.data) < len(u.data)
    assert _sq_err(decode(e), x) <= _sq_err(decode(u), x) * 1.01


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("adaptive(family=powersgd,candidates=[1,2],uniform=4)", "must be one of the candidates"),
        ("adaptive(family=svd,candidates=[1],uniform=1)", "family must be one of"),
        ("adaptive(family=topk,candidates=[0.1],uniform=0.1)|zstd", "then='...'"),
        ("adaptive(family=topk,candidates=[1.5],uniform=1.5)", "ratio"),
    ],
)
def test_bad_adaptive_specs_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(spec)


def test_adaptive_topk_in_a_scenario() -> None:
    raw = tiny_raw(rounds=3, compression={
        "uplink": "ef:adaptive(family=topk,candidates=[0.01,0.05,0.2],uniform=0.05,then='quant(bits=8)|zstd')"
    })
    sm = run_scenario(validate(raw), tempfile.mkdtemp())
    assert sm["ratio_up"] > 10 and sm["final_accuracy"] > 0.15  # learning: chance is 0.1
