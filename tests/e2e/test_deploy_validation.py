"""A deployed server checks every update against the model before it counts: a device that
sends NaN or a wrong shape is told why (INVALID_ARGUMENT) and the round goes on without it,
at once, not at the deadline."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from fedkit.compression import make
from fedkit.deploy import ServerOptions, serve
from fedkit.runtime.client import ClientHost
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.transport.client import run_client
from fedkit.types import Reply, Task
from tests.conftest import tiny_raw

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("attack", ["nan", "shape"])
def test_bad_updates_are_refused_on_the_wire(attack: str, tmp_path: Path, caplog) -> None:
    raw = tiny_raw(rounds=2, clients={"count": 3, "per_round": {"fraction": 1.0}},
                   server={"min_replies": 1, "deadline_s": 60})
    s = validate(raw)
    clients = list(build(s).clients.values())
    honest = [ClientHost(c) for c in clients[:2]]
    inner = ClientHost(clients[2])

    def attacker(task: Task) -> Reply:
        r = inner(task)
        delta = make("identity").decode(r.update)
        bad = [np.full_like(a, np.nan) for a in delta] if attack == "nan" else [a.T for a in delta]
        return dataclasses.replace(r, update=make("identity").encode(None, bad)[1])

    port_file = tmp_path / "port"
    result: dict = {}

    def server() -> None:
        opts = ServerOptions(listen="127.0.0.1:0", insecure=True, port_file=str(port_file), wait_timeout_s=30)
        result["summary"] = serve(s, tmp_path / "run", opts)

    caplog.set_level(logging.WARNING)
    t = threading.Thread(target=server, daemon=True)
    t.start()
    for _ in range(300):
        if port_file.exists():
            break
        threading.Event().wait(0.05)
    addr = f"127.0.0.1:{port_file.read_text()}"
    stop = threading.Event()
    fns = [*zip(clients[:2], honest, strict=True), (clients[2], attacker)]
    threads = [
        threading.Thread(target=run_client, args=(addr, fn), kwargs={"name": c.id, "insecure": True, "stop": stop}, daemon=True)
        for c, fn in fns
    ]
    for th in threads:
        th.start()
    t.join(90)
    stop.set()
    assert "summary" in result
    assert result["summary"]["rounds"] == 2 and result["summary"]["skipped_rounds"] == 0
    rejected = [r.getMessage() for r in caplog.records if "INVALID_ARGUMENT" in r.getMessage()]
    assert rejected, caplog.text
    want = "contains NaN or Inf" if attack == "nan" else "declared as"
    assert any(clients[2].id in m and want in m for m in rejected), rejected
    assert np.isfinite(result["summary"]["final_accuracy"])
    # a refused reply settles that client's task: the round does not wait for the deadline
    assert result["summary"]["total_wall_s"] < 30
