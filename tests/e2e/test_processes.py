"""Real processes over loopback gRPC: same params as in-process, resume after a server crash,
survivors finish a round when a client is killed, nothing outlives Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedkit.experiment import run_scenario
from fedkit.launch import run_processes
from fedkit.scenario import validate
from tests.conftest import tiny_raw

pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(run: Path) -> int:
    f = run / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _fedkit(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "fedkit", *args], stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


COMPRESSED = {
    "uplink": "ef:topk(ratio=0.05)|quant(bits=8)|zstd",
    "downlink": "quant(bits=8)|zstd",
    "downlink_mode": "delta",
}


@pytest.mark.parametrize("compression", [None, COMPRESSED], ids=["float32", "compressed"])
def test_processes_give_bit_identical_params(tmp_path: Path, compression: dict | None) -> None:
    raw = tiny_raw(rounds=3, strategy={"name": "fedadam", "lr": 0.05})
    if compression:
        raw["compression"] = compression
        raw["clients"]["per_round"] = {"fraction": 1.0}
    s = validate(raw)
    a = run_scenario(s, tmp_path / "inproc")
    b = run_processes(s, tmp_path / "procs", workers=2)
    assert b["params_sha256"] == a["params_sha256"]
    # byte counts are the serialized messages: the same whichever way they travel
    assert b["total_bytes_up"] == a["total_bytes_up"] and b["total_bytes_down"] == a["total_bytes_down"]
    assert b["rounds"] == 3
    if compression:
        assert a["ratio_up"] > 5 and a["ratio_down"] > 1.5


def test_dp_over_processes_gives_the_same_noise_and_epsilon(tmp_path: Path) -> None:
    pytest.importorskip("dp_accounting")
    raw = tiny_raw(rounds=3, clients={"count": 6, "per_round": {"fraction": 0.5, "poisson": True}})
    raw["privacy"] = {"dp": {"clip_norm": 0.1, "noise_multiplier": 0.8, "adaptive": {"count_stddev": 1.0}}}
    s = validate(raw)
    a = run_scenario(s, tmp_path / "inproc")
    b = run_processes(s, tmp_path / "procs", workers=2)  # the clip mod and its bit run in client processes
    assert b["params_sha256"] == a["params_sha256"]
    assert b["dp_epsilon"] == a["dp_epsilon"] > 0


def _client_files(tmp_path: Path, s) -> list[str]:
    from fedkit.runtime.client import save_client_data
    from fedkit.scenario.build import build

    args = []
    for name, state in build(s).clients.items():
        f = tmp_path / f"{name}.npz"
        save_client_data(f, state)
        args += ["--data", f"{name}={f}"]
    return args


def test_server_crash_then_resume_ends_with_the_same_params(tmp_path: Path) -> None:
    raw = tiny_raw(rounds=6, strategy={"name": "fedavgm"}, train={"steps": 300, "batch_size": 8, "lr": 0.05})
    s = validate(raw)
    expected = run_scenario(s, tmp_path / "ref")["params_sha256"]
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(raw))
    port = _free_port()
    run = tmp_path / "run"
    server_args = ["server", "--scenario", str(scen), "--listen", f"127.0.0.1:{port}", "--insecure", "-q"]
    server = _fedkit(*server_args, "--out", str(run), log=tmp_path / "server1.log")
    clients = _fedkit("client", "--server", f"127.0.0.1:{port}", "--insecure",
                      *_client_files(tmp_path, s), log=tmp_path / "clients.log")
    try:
        _wait(lambda: _rows(run) >= 3, 120, "three rounds")
        os.killpg(server.pid, signal.SIGKILL)  # crash mid-run
        server.wait()
        done = _rows(run)
        assert done < 6
        server = _fedkit(*server_args, "--resume", str(run), log=tmp_path / "server2.log")
        assert server.wait(timeout=150) == 0, (tmp_path / "server2.log").read_text()
        assert clients.wait(timeout=30) == 0  # told "done" after reconnecting
    finally:
        _stop(server, clients)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["params_sha256"] == expected
    assert [json.loads(r)["round"] for r in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_killed_client_does_not_stop_the_round(tmp_path: Path) -> None:
    raw = tiny_raw(
        rounds=3, clients={"count": 3, "per_round": {"fraction": 1.0}},
        train={"steps": 4000, "batch_size": 32, "lr": 0.05},
        server={"deadline_s": 20, "min_replies": 2},
    )
    s = validate(raw)
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(raw))
    port = _free_port()
    run = tmp_path / "run"
    files = _client_files(tmp_path, s)
    server = _fedkit("server", "--scenario", str(scen), "--listen", f"127.0.0.1:{port}", "--insecure",
                     "--out", str(run), "-q", log=tmp_path / "server.log")
    addr = ["--server", f"127.0.0.1:{port}", "--insecure"]
    survivors = _fedkit("client", *addr, *files[:4], log=tmp_path / "c01.log")
    victim = _fedkit("client", *addr, *files[4:], log=tmp_path / "c2.log")
    try:
        _wait(lambda: _rows(run) >= 1, 120, "round 1")
        time.sleep(0.3)  # round 2 is training now
        os.killpg(victim.pid, signal.SIGKILL)
        assert server.wait(timeout=150) == 0, (tmp_path / "server.log").read_text()
    finally:
        _stop(server, survivors, victim)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["clients_finished"] == 3
    assert rows[1]["clients_finished"] == 2 and rows[1]["status"] == "ok"
    assert rows[1]["wall_s"] < 20  # a dead client is noticed, not waited for until the deadline


def test_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    raw = tiny_raw(rounds=50, train={"steps": 2000, "batch_size": 32})
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(raw))
    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()  # this run's fedkit-procs-* dir lands here: other runs on the machine do not count
    driver = subprocess.Popen(
        [sys.executable, "-m", "fedkit", "run", str(scen), "--mode", "processes", "--out", str(run), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR=str(tmp)),
    )
    try:
        _wait(lambda: _rows(run) >= 1, 120, "round 1")
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=30) == 130
    finally:
        if driver.poll() is None:
            driver.kill()
    _wait(lambda: not [c for c in _cmdlines().values() if str(run) in c or str(tmp) in c], 10, "children to exit")
    assert (run / "checkpoint.npz").exists()  # committed rounds survive the interrupt
    assert not list(tmp.glob("fedkit-procs-*")), "the temp dir with the CA key and tokens is left"


def _cmdlines() -> dict[int, str]:
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_every_child_and_remove_the_secrets(tmp_path: Path, sig: int) -> None:
    raw = tiny_raw(rounds=50, clients={"count": 2, "per_round": {"fraction": 1.0}},
                   train={"steps": 2000, "batch_size": 32})
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(raw))
    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-m", "fedkit", "run", str(scen), "--mode", "processes", "--out", str(run), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR=str(tmp)),
    )
    work = tmp / "not-started"
    try:
        _wait(lambda: _rows(run) >= 1, 120, "round 1")
        (work,) = tmp.glob("fedkit-procs-*")
        secrets = {f.name: f.read_text().strip() for f in work.glob("*.token")}
        assert len(secrets) == 2
        assert all((work / n).stat().st_mode & 0o077 == 0 for n in secrets)  # only the user reads them
        kids = {pid: cmd for pid, cmd in _cmdlines().items() if str(work) in cmd}
        assert len(kids) >= 2  # the server and at least one client pool
        for cmd in kids.values():
            assert not any(t in cmd for t in secrets.values()), "a token is on a command line"
        driver.send_signal(sig)
        assert driver.wait(timeout=30) == 128 + sig
    finally:
        if driver.poll() is None:
            driver.kill()
        try:
            _wait(lambda: not any(str(work) in c for c in _cmdlines().values()), 10, "children to exit")
        finally:  # never leave a stray process to the next test, even when this one fails
            for pid, cmd in _cmdlines().items():
                if str(work) in cmd:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    assert not work.exists(), "the temp dir with the CA key, tokens and data copies is left"
    assert (run / "checkpoint.npz").exists()
