"""Local multi-process simulation: one real server process and client processes on 127.0.0.1.

Each client's data is written to its own ``.npz`` and served by ``fedkit client`` exactly as a
device would; many clients share a bounded pool of processes. The processes talk TLS with
per-client tokens made for this run. Everything is torn down on exit, error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedkit.experiment import RoundCallback
from fedkit.report.run_dir import check_can_start, read_metrics
from fedkit.runtime.client import save_client_data
from fedkit.scenario import Scenario, dump
from fedkit.scenario.build import build_clients
from fedkit.transport.certs import make_certs
from fedkit.transport.security import hash_token, new_token


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "fedkit", *args],
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )


def _kill(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@contextlib.contextmanager
def _cluster(
    workdir: Path, scenario: Scenario, out: Path, workers: int, resume: bool, overwrite: bool
) -> Iterator[tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]]:
    clients_data = build_clients(scenario)  # the server process builds its own plan
    names = list(clients_data)
    certs = make_certs(workdir / "certs", hosts=("127.0.0.1", "localhost"), clients=())
    tokens = {n: new_token() for n in names}
    (workdir / "tokens.json").write_text(json.dumps({n: hash_token(t) for n, t in tokens.items()}))
    (workdir / "scenario.yaml").write_text(dump(scenario))
    for n, state in clients_data.items():
        save_client_data(workdir / f"{n}.npz", state)
    port_file = workdir / "port"
    server_args = [
        "server", "--scenario", str(workdir / "scenario.yaml"), "--listen", "127.0.0.1:0",
        "--out", str(out), "--port-file", str(port_file),
        "--tls-cert", str(certs["server_cert"]), "--tls-key", str(certs["server_key"]),
        "--tokens", str(workdir / "tokens.json"), "-q",
    ]
    if resume:
        server_args += ["--resume", str(out)]
    elif overwrite:
        server_args.append("--overwrite")
    server = _spawn(server_args, workdir / "server.log")
    clients: list[subprocess.Popen[bytes]] = []
    try:
        while not port_file.exists():
            if server.poll() is not None:
                raise RuntimeError(f"server exited early:\n{(workdir / 'server.log').read_text()}")
            time.sleep(0.02)
        addr = f"127.0.0.1:{port_file.read_text().strip()}"
        pool = max(1, min(workers, len(names)))
        for w in range(pool):
            mine = names[w::pool]
            args = ["client", "--server", addr, "--ca", str(certs["ca_cert"])]
            for n in mine:
                args += ["--data", f"{n}={workdir / f'{n}.npz'}", "--token", f"{n}={tokens[n]}"]
            clients.append(_spawn(args, workdir / f"client-pool-{w}.log"))
        yield server, clients
    except BaseException:  # error or Ctrl-C: nothing may outlive the driver
        _kill([server, *clients], grace_s=0.0)
        raise
    finally:
        _kill([server], grace_s=5.0)
        _kill(clients, grace_s=10.0)  # they exit by themselves once the server says done


def run_processes(
    scenario: Scenario,
    out: str | Path,
    workers: int | None = None,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the scenario with a server process and a pool of client processes."""
    out = Path(out).resolve()
    check_can_start(out, resume, overwrite)  # before any process starts
    workers = workers or max(2, min(scenario.clients.count, 2 * (os.cpu_count() or 1)))
    seen = len(read_metrics(out)) if resume else 0
    with tempfile.TemporaryDirectory(prefix="fedkit-procs-") as tmp, _cluster(
        Path(tmp), scenario, out, workers, resume, overwrite
    ) as (server, _clients):
        while True:
            done = server.poll() is not None
            rows = read_metrics(out) if (out / "metrics.jsonl").exists() else []
            for row in rows[seen:]:
                if on_round is not None:
                    on_round(row)
            seen = max(seen, len(rows))
            if done:
                break
            time.sleep(0.05)
        if server.returncode != 0:
            raise RuntimeError(
                f"server failed (exit {server.returncode}):\n{(Path(tmp) / 'server.log').read_text()[-4000:]}"
            )
    return json.loads((out / "summary.json").read_text())
