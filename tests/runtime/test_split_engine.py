"""Split learning through the round engine: every scheme from a scenario, equal to the reference
loop (fedkit.split.schemes.run_round), bytes by category, lost clients lose only their own
contribution, resume continues identically, any FL strategy aggregates the client parts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.experiment import inprocess_link, run_scenario, run_with_link
from fedkit.report.run_dir import load_params
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.split.schemes import run_round
from fedkit.split.server import server_init
from fedkit.split.wire import SplitFrame
from tests.conftest import tiny_raw

CUTS: dict[str, dict[str, Any]] = {
    "vanilla": {"cut": "2"},
    "splitfed_v1": {"cut": "2"},
    "splitfed_v2": {"cut": "2"},
    "ushape": {"cuts": ["2", "4"]},
    "local_loss": {"cut": "2"},
}


def split_raw(scheme: str, **over: Any) -> dict[str, Any]:
    """3 clients, 2 rounds of 6 steps, digits, an MLP cut after its first hidden layer."""
    split = {"scheme": scheme, **CUTS[scheme], "server": {"lr": 0.1, "momentum": 0.5}}
    split |= over.pop("split", {})
    base = {"rounds": 2, "model": {"name": "mlp", "hidden": [16, 16]},
            "clients": {"count": 3, "per_round": {"fraction": 1.0}}, "train": {"steps": 6, "batch_size": 16, "lr": 0.1}}
    return tiny_raw(**(base | over), split=split)


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _final(out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return load_params(out / "params.npz")[0], load_params(out / "server_params.npz")[0]


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; run_scenario sets the same
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "scheme,extra", [*((k, {}) for k in CUTS), ("splitfed_v2", {"bottleneck": {"dim": 4}})],
    ids=[*CUTS, "splitfed_v2-bottleneck"],
)
def test_engine_equals_the_reference_loop(scheme: str, extra: dict[str, Any], tmp_path: Path) -> None:
    codecs = {"activations": "quant(bits=8)"} | ({} if scheme == "local_loss" else {"gradients": "quant(bits=8)"})
    s = validate(split_raw(scheme, split=codecs | extra))
    run_scenario(s, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    cp_eng, sp_eng = _final(tmp_path / "run")

    exp = build(s)
    sp = exp.plan.split
    data = {c: (st.train.x, st.train.y) for c, st in exp.clients.items()}
    cp, ss = exp.init_params, server_init(sp.endpoint.cfg, sp.initial.shared.params)
    for rnd in (1, 2):
        cp, ss, m = run_round(sp.setup, cp, ss, data, rnd, train=exp.plan.train(rnd), server_opt=sp.endpoint.cfg.opt,
                              seed=s.seed, up=sp.activations, down=sp.gradients)
        row = rows[rnd - 1]
        for k in ("bytes_activations_up", "bytes_activations_down", "bytes_gradients_up", "bytes_gradients_down",
                  "bytes_labels_up", "server_samples", "server_steps"):
            assert row[k] == m[k], (k, row[k], m[k])
        assert row["server_loss"] == pytest.approx(m["server_loss"], rel=1e-12)
        assert row["bytes_down"] == m["bytes_model_down"] and row["bytes_up"] == m["bytes_model_up"]
    assert all(np.array_equal(a, b) for a, b in zip(cp_eng, cp, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(sp_eng, ss.shared.params, strict=True))
    assert 0 <= rows[-1]["test_acc"] <= 1 and rows[-1]["bytes_activations_up"] > 0  # the composed model is evaluated
    if extra:  # a 4-wide bottleneck at a 16-wide cut: the server part starts with its decoder
        assert sp.setup.activation_shape == (4,) and len(sp.initial.shared.params) == 6
    if scheme == "local_loss":
        assert all(r["bytes_gradients_down"] == 0 for r in rows)
    if scheme == "ushape":
        assert all(r["bytes_labels_up"] == 0 and r["bytes_gradients_up"] > 0 for r in rows)


class Spy:
    """An endpoint wrapper that records every frame crossing the in-process link."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.up, self.down = inner, [], []

    def open(self, client: str, task_id: str) -> None:
        self.inner.open(client, task_id)

    def exchange(self, client: str, task_id: str, frame: SplitFrame) -> SplitFrame | None:
        self.up.append(frame)
        reply = self.inner.exchange(client, task_id, frame)
        if reply is not None:
            self.down.append(reply)
        return reply

    def close(self, client: str, task_id: str, reason: str = "") -> None:
        self.inner.close(client, task_id, reason)

    def max_frame_bytes(self) -> int:
        return self.inner.max_frame_bytes()


def _run_with(s: Any, out: Path, wrap: Any = None, cost: Any = None) -> dict[str, Any]:
    """Run ``s`` in-process with the split endpoint seen through ``wrap`` (and a link cost)."""
    from fedkit.split.local import LocalConnect

    exp = build(s)
    ep = exp.plan.split.endpoint if wrap is None else wrap(exp.plan.split.endpoint)
    link = inprocess_link(exp.clients, cost=cost, connect=LocalConnect(ep))
    try:
        return run_with_link(s, exp.plan, exp.init_params, link, out) | {"endpoint": ep}
    finally:
        link.close()


def test_ushape_sends_no_label_tensor_over_the_link(tmp_path: Path) -> None:
    got = _run_with(validate(split_raw("ushape")), tmp_path / "u", Spy)
    spy = got["endpoint"]
    assert spy.up and spy.down
    assert all(f.labels is None for f in spy.up + spy.down)
    kinds = {(f.kind, "up") for f in spy.up} | {(f.kind, "down") for f in spy.down}
    assert kinds == {("activations", "up"), ("gradients", "up"), ("activations", "down"), ("gradients", "down")}
    assert all(r["bytes_labels_up"] == 0 for r in _rows(tmp_path / "u"))


def test_local_loss_sends_no_gradient_down(tmp_path: Path) -> None:
    got = _run_with(validate(split_raw("local_loss")), tmp_path / "l", Spy)
    spy = got["endpoint"]
    assert spy.up and not spy.down  # the server never answers a frame
    assert all(f.labels is not None for f in spy.up)
    rows = _rows(tmp_path / "l")
    assert all(r["bytes_gradients_down"] == 0 and r["bytes_activations_down"] == 0 for r in rows)
    assert all(r["bytes_activations_up"] > 0 and r["bytes_labels_up"] > 0 for r in rows)


class DiesMidStream(Spy):
    """``victim`` opens its stream, sends ``after`` good frames, then its frames never arrive
    (the connection drops): the transport closes the stream with a reason."""

    def __init__(self, inner: Any, victim: str, after: int | None) -> None:
        super().__init__(inner)
        self.victim, self.after, self.sent = victim, after, 0

    def open(self, client: str, task_id: str) -> None:
        if client == self.victim and self.after is None:
            raise ConnectionError("the client never reached the server")
        super().open(client, task_id)

    def exchange(self, client: str, task_id: str, frame: SplitFrame) -> SplitFrame | None:
        if client == self.victim:
            self.sent += 1
            if self.sent > self.after:  # type: ignore[operator]
                self.inner.close(client, task_id, "connection lost")
                raise ConnectionError("connection lost")
        return super().exchange(client, task_id, frame)


@pytest.mark.parametrize("scheme", ["splitfed_v1", "splitfed_v2", "ushape"])
def test_a_client_lost_mid_stream_loses_only_its_contribution(scheme: str, tmp_path: Path) -> None:
    """Dying after 3 batches leaves the server part exactly as never streaming at all does."""
    s = validate(split_raw(scheme))
    victim = "client-1"
    _run_with(s, tmp_path / "mid", lambda ep: DiesMidStream(ep, victim, after=3))
    _run_with(s, tmp_path / "never", lambda ep: DiesMidStream(ep, victim, after=None))
    a, b = _final(tmp_path / "mid"), _final(tmp_path / "never")
    for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]], strict=True):
        assert np.array_equal(x, y)
    rows = _rows(tmp_path / "mid")
    assert all(r["clients_finished"] == 2 and r["status"] == "ok" for r in rows)
    clients = [json.loads(line) for line in (tmp_path / "mid" / "clients.jsonl").read_text().splitlines()]
    assert {r["status"] for r in clients if r["client"] == victim} == {"failed"}
    # the samples the victim streamed before dying do not count
    assert rows[0]["server_samples"] == _rows(tmp_path / "never")[0]["server_samples"]


def test_a_whole_task_past_the_deadline_is_undone(tmp_path: Path) -> None:
    """The victim streams all its batches but its reply never comes: at the (simulated)
    deadline its task is missed and the server part is as if it had never taken part."""
    raw = split_raw("splitfed_v2", server={"deadline_s": 5.0})
    s = validate(raw)
    victim = "client-0"
    _run_with(s, tmp_path / "late", cost=lambda t, r, _sent: math.inf if t.client == victim else 1.0)
    _run_with(s, tmp_path / "never", lambda ep: DiesMidStream(ep, victim, after=None))
    a, b = _final(tmp_path / "late"), _final(tmp_path / "never")
    for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]], strict=True):
        assert np.array_equal(x, y)
    clients = [json.loads(line) for line in (tmp_path / "late" / "clients.jsonl").read_text().splitlines()]
    assert {r["status"] for r in clients if r["client"] == victim} == {"missed"}


@pytest.mark.parametrize("scheme", ["vanilla", "splitfed_v1", "ushape"])
def test_resume_from_a_checkpoint_continues_identically(scheme: str, tmp_path: Path) -> None:
    raw = split_raw(scheme, rounds=3)
    full = run_scenario(validate(raw), tmp_path / "full")
    run_scenario(validate(raw | {"rounds": 2}), tmp_path / "part")
    resumed = run_scenario(validate(raw), tmp_path / "part", resume=True)
    assert resumed["params_sha256"] == full["params_sha256"]
    assert resumed["server_params_sha256"] == full["server_params_sha256"]
    assert [r["round"] for r in _rows(tmp_path / "part")] == [1, 2, 3]
    keys = [k for k in _rows(tmp_path / "full")[-1] if k.startswith("bytes_")]
    assert {k: _rows(tmp_path / "part")[-1][k] for k in keys} == {k: _rows(tmp_path / "full")[-1][k] for k in keys}


def test_any_fl_strategy_aggregates_the_client_parts(tmp_path: Path) -> None:
    base = run_scenario(validate(split_raw("splitfed_v2")), tmp_path / "avg")
    prox0 = run_scenario(validate(split_raw("splitfed_v2", strategy={"name": "fedprox", "mu": 0.0})), tmp_path / "p0")
    assert prox0["params_sha256"] == base["params_sha256"]  # FedProx(mu=0) is FedAvg
    for name, strat in {"fedprox": {"name": "fedprox", "mu": 0.1}, "fedadam": {"name": "fedadam", "lr": 0.01}}.items():
        other = run_scenario(validate(split_raw("splitfed_v2", strategy=strat)), tmp_path / name)
        assert other["params_sha256"] != base["params_sha256"]
        assert other["final_accuracy"] is not None


def test_sequential_schemes_visit_clients_in_the_seeded_order(tmp_path: Path) -> None:
    from fedkit.rng import rng

    run_scenario(validate(split_raw("splitfed_v2", rounds=1)), tmp_path / "o")
    clients = [json.loads(line)["client"] for line in (tmp_path / "o" / "clients.jsonl").read_text().splitlines()]
    names = sorted(clients)
    assert clients == [names[i] for i in rng(3, "split-order", 1).permutation(3)]


@pytest.mark.parametrize("scheme", ["ushape", "local_loss"])
def test_load_model_composes_the_trained_parts(scheme: str, tmp_path: Path) -> None:
    from fedkit import load_model
    from fedkit.models import LocalData, evaluate
    from fedkit.scenario.build import _dataset

    s = validate(split_raw(scheme))
    rows = (run_scenario(s, tmp_path / "run"), _rows(tmp_path / "run"))[1]
    ds = _dataset(s)
    test = LocalData(torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test).long())
    assert evaluate(load_model(tmp_path / "run"), test)["accuracy"] == pytest.approx(rows[-1]["test_acc"])
    (tmp_path / "run" / "params.npz").unlink()  # an unfinished run: the last checkpoint
    assert evaluate(load_model(tmp_path / "run"), test)["accuracy"] == pytest.approx(rows[-1]["test_acc"])
