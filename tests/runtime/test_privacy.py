"""DP through the round engine: what the server sees is clipped, local DP noises on the client
and strips its loss, ε per round lands in metrics.jsonl and summary.json, runs reproduce and a
resumed run draws the same noise."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("dp_accounting")

from fedkit.experiment import inprocess_link, run_scenario  # noqa: E402
from fedkit.runtime.server import run  # noqa: E402
from fedkit.scenario.build import build  # noqa: E402
from fedkit.scenario.load import validate  # noqa: E402
from fedkit.secure.dp import global_norm  # noqa: E402
from fedkit.secure.dp_aggregator import UNCLIPPED  # noqa: E402
from fedkit.types import Params, Update  # noqa: E402
from tests.conftest import tiny_raw  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; run_scenario sets the same
    yield
    torch.set_num_threads(before)


def dp_raw(rounds: int = 3, **dp: Any) -> dict[str, Any]:
    raw = tiny_raw(rounds=rounds, clients={"count": 10, "per_round": {"fraction": 0.5, "poisson": True}})
    raw["privacy"] = {"dp": {"clip_norm": 0.05, "noise_multiplier": 0.5} | dp}
    return raw


@dataclasses.dataclass
class Capture:
    """Records the decoded updates the server's aggregator is given."""

    inner: Any
    seen: list[list[Update]] = dataclasses.field(default_factory=list)

    def init(self, params: Params) -> Any:
        return self.inner.init(params)

    def step(self, state: Any, params: Params, updates: Sequence[Update]) -> Any:
        self.seen.append(list(updates))
        return self.inner.step(state, params, updates)


def _run(raw: dict[str, Any]) -> tuple[Capture, Params]:
    exp = build(validate(raw))
    cap = Capture(exp.plan.aggregator)
    plan = dataclasses.replace(exp.plan, aggregator=cap)
    final = run(plan, inprocess_link(exp.clients, mods=exp.mods), exp.initial_state())
    return cap, final.params


def test_the_server_only_ever_sees_updates_within_the_clip_norm() -> None:
    cap, _ = _run(dp_raw())
    norms = [global_norm(u.delta) for ups in cap.seen for u in ups]
    assert len(norms) >= 6
    assert max(norms) <= 0.05 * (1 + 1e-6)
    assert min(norms) == pytest.approx(0.05, rel=1e-5)  # honest updates are bigger: all clipped


def test_adaptive_clipping_bits_travel_in_the_reply_metrics_and_move_the_norm() -> None:
    cap, _ = _run(dp_raw(adaptive={"count_stddev": 1.0, "lr": 0.5}, clip_norm=10.0))
    bits = [u.metrics[UNCLIPPED] for ups in cap.seen for u in ups]
    assert set(bits) <= {0.0, 1.0} and bits[0] == 1.0  # everything fits in 10 at first


def test_local_dp_noises_on_the_client_and_sends_no_loss() -> None:
    z, c = 2.0, 0.05
    cap, _ = _run(dp_raw(mode="local", noise_multiplier=z, clip_norm=c))
    u = cap.seen[0][0]
    flat = np.concatenate([np.ravel(a) for a in u.delta])
    assert flat.std() == pytest.approx(z * c, rel=0.05)  # thousands of coordinates
    assert "train_loss" not in u.metrics and UNCLIPPED not in u.metrics


def test_epsilon_per_round_in_the_logs_and_the_summary(tmp_path: Path) -> None:
    from fedkit.secure.accountant import epsilon

    summary = run_scenario(validate(dp_raw(rounds=3)), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    eps = [r["dp_epsilon"] for r in rows]
    assert eps == sorted(eps) and eps[0] > 0
    for k, e in enumerate(eps, 1):
        assert e == pytest.approx(epsilon(0.5, 0.5, k, 1e-5), rel=1e-9)
    assert rows[0]["dp_noise_std"] == pytest.approx(0.5 * 0.05 / 5)
    assert summary["dp_epsilon"] == eps[-1] and summary["dp_delta"] == 1e-5


def test_same_seed_same_params_and_a_resumed_run_draws_the_same_noise(tmp_path: Path) -> None:
    raw = dp_raw(rounds=4, adaptive={"count_stddev": 1.0})
    full = run_scenario(validate(raw), tmp_path / "full")
    again = run_scenario(validate(raw), tmp_path / "again")
    assert full["params_sha256"] == again["params_sha256"]
    run_scenario(validate(dp_raw(rounds=2, adaptive={"count_stddev": 1.0})), tmp_path / "part")
    part = run_scenario(validate(raw), tmp_path / "part", resume=True, force=False)
    assert part["params_sha256"] == full["params_sha256"] and part["dp_epsilon"] == full["dp_epsilon"]
    other = run_scenario(validate(raw | {"seed": 4}), tmp_path / "other")
    assert other["params_sha256"] != full["params_sha256"]
