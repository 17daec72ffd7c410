"""Async strategies end to end on heterogeneous simulated devices: deterministic in-process,
identical params and simulated times over loopback gRPC (real clients, the simulated clock
forcing the completion order), and a resumed run that continues."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fedkit.experiment import run_scenario, run_with_link, scenario_link
from fedkit.report.run_dir import read_metrics
from fedkit.runtime.client import ClientHost
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.scenario.simulation import simulation
from fedkit.sim.clocked import ClockedLink
from fedkit.transport import GrpcServer
from fedkit.transport.client import run_client
from tests.conftest import tiny_raw

pytestmark = pytest.mark.timeout(240)

DEVICES = {  # a 10x spread of speeds
    "profiles": {
        "fast": {"compute": {"samples_per_s": 3000}, "up_mbps": 20, "down_mbps": 20, "latency_ms": 5},
        "slow": {"compute": {"samples_per_s": 300}, "up_mbps": 20, "down_mbps": 20, "latency_ms": 5},
    },
    "assign": {"fast": 0.5, "slow": 0.5},
}
STRATEGIES = {
    "fedasync": {"name": "fedasync", "alpha": 0.6},
    "fedbuff": {"name": "fedbuff", "k": 2, "concurrency": 4},
    "fedcompass": {"name": "fedcompass", "min_steps": 2, "max_steps": 6},
}


def _raw(strategy: dict, **over) -> dict:
    raw = tiny_raw(**{"rounds": 6, "strategy": strategy, "devices": DEVICES,
                      "train": {"steps": 4, "batch_size": 16, "lr": 0.1}, **over})
    del raw["clients"]["per_round"]
    return raw


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_async_runs_are_deterministic_and_move_the_clock(name: str, tmp_path: Path) -> None:
    a = run_scenario(validate(_raw(STRATEGIES[name])), tmp_path / "a")
    b = run_scenario(validate(_raw(STRATEGIES[name])), tmp_path / "b")
    assert a["params_sha256"] == b["params_sha256"] and a["rounds"] == 6
    rows = read_metrics(tmp_path / "a")
    assert [r["sim_time_s"] for r in rows] == [r["sim_time_s"] for r in read_metrics(tmp_path / "b")]
    times = [r["sim_time_s"] for r in rows]
    assert times == sorted(times) and times[-1] > 0
    c = run_scenario(validate(_raw(STRATEGIES[name], seed=4)), tmp_path / "c")
    assert c["params_sha256"] != a["params_sha256"]


@pytest.mark.parametrize("name", ["fedbuff", "fedcompass"])
def test_async_over_grpc_gives_the_in_process_params_and_times(name: str, tmp_path: Path) -> None:
    s = validate(_raw(STRATEGIES[name]))
    exp = build(s)
    local = run_with_link(s, exp.plan, exp.init_params, scenario_link(exp), tmp_path / "local")

    exp = build(s)  # fresh clients
    sim = simulation(s)
    assert sim is not None
    server = GrpcServer("127.0.0.1:0", insecure=True)
    port = server.start()
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_client, args=(f"127.0.0.1:{port}", ClientHost(c)),
                         kwargs={"name": c.id, "insecure": True, "stop": stop}, daemon=True)
        for c in exp.clients.values()
    ]
    try:
        for t in threads:
            t.start()
        server.wait_for_clients(len(threads), 30)
        link = ClockedLink(server.link, sim.cost, sim.online, real_timeout_s=60)
        remote = run_with_link(s, exp.plan, exp.init_params, link, tmp_path / "remote")
    finally:
        server.shutdown_clients()
        stop.set()
        server.stop()
        for t in threads:
            t.join(10)
    assert remote["params_sha256"] == local["params_sha256"]
    assert [r["sim_time_s"] for r in read_metrics(tmp_path / "remote")] == [
        r["sim_time_s"] for r in read_metrics(tmp_path / "local")
    ]


def test_a_resumed_async_run_continues_from_its_checkpoint(tmp_path: Path) -> None:
    """In-flight tasks are not checkpointed: the resumed run starts the policy afresh from the
    checkpointed model and version (so its params differ from an uninterrupted run's)."""
    run_scenario(validate(_raw(STRATEGIES["fedbuff"], rounds=3)), tmp_path / "run")
    summary = run_scenario(validate(_raw(STRATEGIES["fedbuff"], rounds=5)), tmp_path / "run", resume=True)
    rows = read_metrics(tmp_path / "run")
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5] and summary["rounds"] == 5
    assert rows[3]["sim_time_s"] >= rows[2]["sim_time_s"]  # the clock continues
