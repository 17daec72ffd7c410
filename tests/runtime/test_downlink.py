"""Downlink: full and delta modes, exact reconstruction, stale clients, checkpoints."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from fedkit.experiment import run_scenario
from fedkit.runtime import downlink as dl
from fedkit.scenario import ScenarioError, validate
from tests.conftest import tiny_raw

CODEC = "topk(ratio=0.1)|quant(bits=8)|zstd"


def _params(seed: int) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.normal(size=(20, 10)).astype(np.float32), g.normal(size=10).astype(np.float32)]


def test_delta_clients_rebuild_the_servers_reference_exactly() -> None:
    state = dl.DownlinkState()
    held: dict[str, tuple[int, list[np.ndarray]] | None] = {"a": None, "b": None}
    for rnd in range(1, 6):
        clients = ["a", "b"] if rnd != 3 else ["a"]  # b sits round 3 out
        out = dl.prepare("delta", CODEC, state, _params(rnd), clients, rnd, seed=0)
        for c in clients:
            params, held[c] = dl.receive(out.configs[c], out.payloads[c], held[c])
            assert all(np.array_equal(x, y) for x, y in zip(params, out.state.ref, strict=True))
        if rnd == 4:  # b missed round 3: it is sent the model whole, a gets a small delta
            assert out.configs["b"].mode == "full" and out.configs["a"].mode == "delta"
            assert out.payloads["a"].nbytes * 4 < out.payloads["b"].nbytes
        state = out.state
    # server-side error feedback: the reference tracks the model, it does not drift away
    gap = [np.abs(p - r).max() for p, r in zip(_params(5), state.ref, strict=True)]
    assert max(gap) < max(np.abs(p).max() for p in _params(5))


def test_a_client_without_the_base_model_says_so() -> None:
    out1 = dl.prepare("delta", CODEC, dl.DownlinkState(), _params(1), ["a"], 1, seed=0)
    out2 = dl.prepare("delta", CODEC, out1.state, _params(2), ["a"], 2, seed=0)
    with pytest.raises(ValueError, match="needs the model of round 1; this client has none"):
        dl.receive(out2.configs["a"], out2.payloads["a"], None)


def test_state_checkpoint_round_trip_forgets_holders() -> None:
    out = dl.prepare("delta", CODEC, dl.DownlinkState(), _params(1), ["a"], 1, seed=0)
    back = dl.DownlinkState.from_arrays(out.state.to_arrays())
    assert back.version == 1 and not back.holders
    assert all(np.array_equal(x, y) for x, y in zip(back.ref, out.state.ref, strict=True))


def test_delta_downlink_saves_bytes_at_equal_accuracy() -> None:
    base = tiny_raw(rounds=6, clients={"count": 4, "per_round": {"fraction": 1.0}})
    full = run_scenario(validate(base), tempfile.mkdtemp())
    raw = tiny_raw(rounds=6, clients={"count": 4, "per_round": {"fraction": 1.0}},
                   compression={"downlink": "quant(bits=8)|zstd", "downlink_mode": "delta"})
    delta = run_scenario(validate(raw), tempfile.mkdtemp())
    assert delta["total_bytes_down"] * 2.5 < full["total_bytes_down"]
    assert delta["ratio_down"] > 2.5
    assert abs(delta["final_accuracy"] - full["final_accuracy"]) <= 0.03


def test_ef_on_the_downlink_is_refused() -> None:
    with pytest.raises(ScenarioError, match="drop 'ef:'"):
        validate(tiny_raw(compression={"downlink": "ef:topk(ratio=0.1)"}))
