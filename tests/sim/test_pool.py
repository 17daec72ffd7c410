"""The pool executor: bit-identical params to sequential, client state kept across workers,
a dead worker loses only its task."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fedkit.sim.pool as pool_mod
from tests.conftest import tiny_raw
from tests.sim.executors import DIE_SIZE, DRIVER_PID, run_kind, unique_size_client

POOL = {"kind": "pool", "workers": 2}


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_params_bit_identical_to_sequential_with_stateful_clients(start: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # error feedback keeps residuals per client, delta downlink the model each client holds:
    # both must follow the client from worker to worker, forked (Linux's default) or spawned
    monkeypatch.setattr(pool_mod, "default_start", lambda: start)
    raw = tiny_raw(rounds=3, clients__per_round={"fraction": 0.67},
                   compression={"uplink": "ef:topk(ratio=0.1)", "downlink_mode": "delta"})
    seq, seq_rows = run_kind(raw)
    pool, pool_rows = run_kind(raw, POOL)
    assert all(np.array_equal(a, b) for a, b in zip(seq, pool, strict=True))
    assert [r["client"] for r in seq_rows] == [r["client"] for r in pool_rows]
    assert all(r["status"] == "ok" for r in pool_rows)


def test_a_dead_worker_loses_only_its_clients_task(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tiny_raw(rounds=2, clients__per_round={"fraction": 1.0},
                   train={"epochs": 1, "batch_size": 16, "lr": 0.1, "fn": "tests.sim.executors:fail_for_size"})
    victim, size = unique_size_client(raw)
    monkeypatch.setenv(DRIVER_PID, str(os.getpid()))
    monkeypatch.setenv(DIE_SIZE, str(size))
    seq, _ = run_kind(raw)  # here the victim's task raises instead: the same round otherwise
    pool, rows = run_kind(raw, POOL)
    assert all(np.array_equal(a, b) for a, b in zip(seq, pool, strict=True))
    failed = [r for r in rows if r["status"] != "ok"]
    assert [r["client"] for r in failed] == [victim, victim]  # once a round, the others fine
    assert all("worker lost" in r["reason"] and "exited" in r["reason"] for r in failed)
    assert sum(r["status"] == "ok" for r in rows) == 2 * 5
