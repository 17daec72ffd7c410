"""Secure aggregation over gRPC: clients whose connection dies at each stage give the in-process
result (same params, same bytes, same round status), real processes (``--mode processes``) give
bit-identical params and bytes, and a killed client process is a dropout, not a stalled round."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkit.experiment import run_scenario, run_with_link
from fedkit.launch import run_processes
from fedkit.runtime import secagg as rsa
from fedkit.runtime.client import ClientHost, Mod, encode_uplink, secagg_mask
from fedkit.runtime.server import RunFailed
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.sim.link import InProcessLink
from fedkit.transport import GrpcServer
from fedkit.transport.client import run_client
from tests.e2e.test_processes import _client_files, _fedkit, _free_port, _rows, _stop, _wait
from tests.runtime.test_secagg import secagg_raw

pytestmark = pytest.mark.timeout(300)


class Killed(BaseException):
    """The client is gone: its connection drops with the task open (no reply at all)."""


def dying(rnd: int, at: Mapping[str, Collection[str]], exc: type[BaseException]) -> Mod:
    def mod(state: Any, task: Any, ctx: Any, inner: Any) -> Any:
        if task.round == rnd and task.client in at.get(task.kind, ()):
            raise exc(f"{task.client} dies at {task.kind}")
        return inner(state, task, ctx)

    return mod


def _rows_of(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _secagg_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k.startswith("secagg_") and k != "secagg_server_s"}


def _run(raw: dict[str, Any], out: Path, grpc: bool, die: Mapping[str, Collection[str]]) -> dict[str, Any]:
    exp = build(validate(raw))
    mods = (dying(2, die, Killed if grpc else RuntimeError), encode_uplink, secagg_mask)
    if not grpc:
        hosts = {c: ClientHost(s, mods=mods) for c, s in exp.clients.items()}
        return _summary(lambda: run_with_link(exp.scenario, exp.plan, exp.init_params, InProcessLink(hosts), out))
    server = GrpcServer("127.0.0.1:0", insecure=True)
    addr = f"127.0.0.1:{server.start()}"
    stop = threading.Event()

    def client(state: Any) -> None:
        with contextlib.suppress(Killed):  # the thread ends like a killed process: no goodbye
            run_client(addr, ClientHost(state, mods=mods), name=state.id, insecure=True, stop=stop)

    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in exp.clients.values()]
    try:
        for t in threads:
            t.start()
        server.wait_for_clients(len(threads), 60)
        return _summary(lambda: run_with_link(exp.scenario, exp.plan, exp.init_params, server.link, out))
    finally:
        server.shutdown_clients()
        stop.set()
        server.stop()
        for t in threads:
            t.join(10)


def _summary(fn: Any) -> dict[str, Any]:
    try:
        return fn()
    except RunFailed as e:
        return {"failed": str(e)}


@pytest.mark.parametrize(("n", "die", "status"), [
    (10, {k: {f"client-{i}"} for i, k in enumerate(rsa.KINDS)}, "ok"),
    (6, {rsa.MASKED: {"client-0", "client-1", "client-2"}},
     "skipped: secagg round 2 aborted at stage 'masked-input'"),
], ids=["one-dies-at-each-stage", "beyond-the-threshold"])
def test_clients_dying_at_each_stage_over_grpc_match_in_process(
    tmp_path: Path, n: int, die: dict[str, set[str]], status: str,
) -> None:
    raw = secagg_raw(n=n, rounds=2, server={"deadline_s": 60})
    local = _run(raw, tmp_path / "local", False, die)
    remote = _run(raw, tmp_path / "remote", True, die)
    a, b = _rows_of(tmp_path / "local"), _rows_of(tmp_path / "remote")
    assert [r["status"] for r in a] == [r["status"] for r in b] == ["ok", a[1]["status"]]
    assert a[1]["status"].startswith(status)
    assert [_secagg_metrics(r) for r in a] == [_secagg_metrics(r) for r in b]
    for key in ("bytes_up", "bytes_down", "clients_finished"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert local["params_sha256"] == remote["params_sha256"]
    if status == "ok":
        assert b[1]["secagg_survivors"] == n - 3 and b[1]["clients_finished"] == n - 3
        assert b[1]["wall_s"] < 60  # a dead client is noticed, not waited for until the deadline


def test_processes_give_bit_identical_params_and_bytes(tmp_path: Path) -> None:
    raw = secagg_raw(rounds=2, compression={"downlink": "quant(bits=8)|zstd", "downlink_mode": "delta"})
    s = validate(raw)
    a = run_scenario(s, tmp_path / "inproc")
    b = run_processes(s, tmp_path / "procs", workers=2)
    assert b["rounds"] == 2 and b["skipped_rounds"] == 0
    assert b["params_sha256"] == a["params_sha256"]
    assert b["total_bytes_up"] == a["total_bytes_up"] and b["total_bytes_down"] == a["total_bytes_down"]
    rows_a, rows_b = _rows_of(tmp_path / "inproc"), _rows_of(tmp_path / "procs")
    assert [_secagg_metrics(r) for r in rows_a] == [_secagg_metrics(r) for r in rows_b]


def test_a_killed_client_process_is_a_dropout(tmp_path: Path) -> None:
    raw = secagg_raw(n=4, rounds=2, train={"steps": 1500, "batch_size": 32, "lr": 0.05},
                     server={"deadline_s": 60, "min_replies": 2})
    s = validate(raw)
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(raw))
    port, run = _free_port(), tmp_path / "run"
    files = _client_files(tmp_path, s)
    server = _fedkit("server", "--scenario", str(scen), "--listen", f"127.0.0.1:{port}", "--insecure",
                     "--out", str(run), "-q", log=tmp_path / "server.log")
    addr = ["--server", f"127.0.0.1:{port}", "--insecure"]
    survivors = _fedkit("client", *addr, *files[:6], log=tmp_path / "c0-2.log")
    victim = _fedkit("client", *addr, *files[6:], log=tmp_path / "c3.log")
    try:
        _wait(lambda: _rows(run) >= 1, 120, "round 1")
        time.sleep(0.3)  # round 2 is training (its advertise stage) now
        _stop(victim)
        assert server.wait(timeout=150) == 0, (tmp_path / "server.log").read_text()
    finally:
        _stop(server, survivors, victim)
    rows = _rows_of(run)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["secagg_survivors"] == 4
    assert rows[1]["secagg_survivors"] == 3 and rows[1]["clients_finished"] == 3
    assert rows[1]["wall_s"] < 60
