"""One simulated clock in every mode: a devices scenario (stragglers doing partial work,
over-selection, availability, dropout) gives identical params and identical simulated times
in-process and with real client processes over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkit.experiment import run_scenario
from fedkit.launch import run_processes
from fedkit.scenario import validate
from tests.conftest import tiny_raw

pytestmark = pytest.mark.timeout(240)

DEVICES = {
    "profiles": {
        "fast": {"compute": {"samples_per_s": 2000}, "up_mbps": 10, "down_mbps": 20, "latency_ms": 20},
        "slow": {"compute": {"samples_per_s": 60, "spread": 0.3}, "up_mbps": 2, "down_mbps": 5,
                 "latency_ms": 50, "availability": {"kind": "markov", "mean_on_s": 400, "mean_off_s": 20},
                 "dropout": 0.1},
    },
    "assign": {"fast": 0.5, "slow": 0.5},
}


def _rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def test_inprocess_and_processes_agree_on_params_and_simulated_times(tmp_path: Path) -> None:
    raw = tiny_raw(rounds=2, devices=DEVICES, clients={"count": 4, "per_round": {"count": 3}},
                   server={"deadline_s": 5.0, "stragglers": "partial", "over_select": 1.3},
                   compression={"uplink": "ef:topk(ratio=0.1)"})
    s = validate(raw)
    a = run_scenario(s, tmp_path / "inproc")
    b = run_processes(s, tmp_path / "procs", workers=2)
    assert b["params_sha256"] == a["params_sha256"]
    assert b["sim_time_s"] == a["sim_time_s"] > 0
    keys = ("round", "sim_time_s", "clients_sampled", "clients_finished", "clients_dropped", "work_fraction")
    ma, mb = (_rows(tmp_path / d, "metrics.jsonl") for d in ("inproc", "procs"))
    assert [{k: r.get(k) for k in keys} for r in mb] == [{k: r.get(k) for k in keys} for r in ma]
    ca, cb = (_rows(tmp_path / d, "clients.jsonl") for d in ("inproc", "procs"))
    pick = ("round", "client", "status", "time_s", "steps", "work")
    assert [{k: r.get(k) for k in pick} for r in cb] == [{k: r.get(k) for k in pick} for r in ca]
    # the scenario exercises what it claims: partial work, and a surplus client cancelled
    assert any(r.get("work", 1.0) < 1.0 for r in ca if r["status"] == "ok")
    assert any(r["status"] == "cancelled" for r in ca) and all(r["clients_sampled"] == 4 for r in ma)
