"""Local multi-process simulation: one real server process and client processes on 127.0.0.1.

Each client's data is written to its own ``.npz`` and served by ``fedkit client`` exactly as a
device would; many clients share a bounded pool of processes. The processes talk TLS with
per-client tokens made for this run. Everything is torn down on exit, error, Ctrl-C, SIGTERM or
SIGHUP: children are killed and the temporary directory (CA key, tokens, copies of every
client's data) is removed. Tokens travel in files readable only by the user, never on a command
line (``/proc/*/cmdline`` is world-readable). On Linux the children also die with the driver if
it is killed outright (``PR_SET_PDEATHSIG``); only then can the temporary directory remain.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedkit.experiment import RoundCallback
from fedkit.report.run_dir import check_can_start, read_metrics
from fedkit.runtime.client import save_client_data
from fedkit.scenario import Scenario, dump
from fedkit.scenario.build import build_clients
from fedkit.transport.certs import make_certs
from fedkit.transport.security import hash_token, new_token


class Terminated(KeyboardInterrupt):
    """The driver got SIGTERM or SIGHUP; unwinds like Ctrl-C so every cleanup path runs
    (the ``fedkit`` command then exits with 128 + ``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` (main thread only); later ones are ignored
    so they cannot interrupt the cleanup the first one started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: object) -> None:
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the driver dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return preexec


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "fedkit", *args],
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent(),
        )


def _secret(path: Path, text: str) -> Path:
    """Write ``text`` to a new file only the user can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


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
    workdir: Path, scenario: Scenario, out: Path, workers: int, resume: bool, overwrite: bool,
    force: bool = False,
) -> Iterator[tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]]:
    clients_data = build_clients(scenario)  # the server process builds its own plan
    names = list(clients_data)
    certs = make_certs(workdir / "certs", hosts=("127.0.0.1", "localhost"), clients=())
    tokens = {n: new_token() for n in names}
    (workdir / "tokens.json").write_text(json.dumps({n: hash_token(t) for n, t in tokens.items()}))
    (workdir / "scenario.yaml").write_text(dump(scenario))
    for n, state in clients_data.items():
        save_client_data(workdir / f"{n}.npz", state)
    token_files = {n: _secret(workdir / f"{n}.token", t) for n, t in tokens.items()}
    port_file = workdir / "port"
    server_args = [
        "server", "--scenario", str(workdir / "scenario.yaml"), "--listen", "127.0.0.1:0",
        "--out", str(out), "--port-file", str(port_file),
        "--tls-cert", str(certs["server_cert"]), "--tls-key", str(certs["server_key"]),
        "--tokens", str(workdir / "tokens.json"), "-q",
    ]
    if scenario.devices is not None:  # the simulated clock, as in-process
        server_args.append("--simulate")
    if resume:
        server_args += ["--resume", str(out)] + (["--force"] if force else [])
    elif overwrite:
        server_args.append("--overwrite")
    server: subprocess.Popen[bytes] | None = None
    clients: list[subprocess.Popen[bytes]] = []
    try:
        server = _spawn(server_args, workdir / "server.log")
        while not port_file.exists():
            if server.poll() is not None:
                raise RuntimeError(f"server exited early:\n{(workdir / 'server.log').read_text()}")
            time.sleep(0.02)
        addr = f"127.0.0.1:{port_file.read_text().strip()}"
        pool = max(1, min(workers, len(names)))
        for w in range(pool):
            mine = names[w::pool]
            args = ["client", "--server", addr, "--ca", str(certs["ca_cert"])]
            if "hf" in scenario.model:  # the device declares its base at Join (fedkit/peft/join.py)
                args += ["--base-model", str(scenario.model["hf"])]
            for n in mine:
                args += ["--data", f"{n}={workdir / f'{n}.npz'}", "--token-file", f"{n}={token_files[n]}"]
            clients.append(_spawn(args, workdir / f"client-pool-{w}.log"))
        yield server, clients
    except BaseException:  # error, Ctrl-C, SIGTERM, SIGHUP: nothing may outlive the driver
        _kill([p for p in (server, *clients) if p is not None], grace_s=0.0)
        raise
    finally:
        _kill([server] if server is not None else [], grace_s=5.0)
        _kill(clients, grace_s=10.0)  # they exit by themselves once the server says done


def run_processes(
    scenario: Scenario,
    out: str | Path,
    workers: int | None = None,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Run the scenario with a server process and a pool of client processes."""
    out = Path(out).resolve()
    check_can_start(out, resume, overwrite, dump(scenario), force)  # before any process starts
    workers = workers or max(2, min(scenario.clients.count, 2 * (os.cpu_count() or 1)))
    seen = len(read_metrics(out)) if resume else 0
    with _terminate_on_signals(), tempfile.TemporaryDirectory(prefix="fedkit-procs-") as tmp, _cluster(
        Path(tmp), scenario, out, workers, resume, overwrite, force
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
