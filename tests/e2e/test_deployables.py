"""The deployables as an operator uses them: certs and tokens, a TLS server, device clients,
and a device with a wrong token turned away while the others carry on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedkit.cli import main
from fedkit.runtime.client import save_client_data
from fedkit.scenario import validate
from fedkit.scenario.build import build
from tests.conftest import tiny_raw

ROOT = Path(__file__).parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))  # the deployables run this checkout's fedkit
pytestmark = pytest.mark.timeout(180)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tls_server_token_clients_and_an_intruder(tmp_path: Path) -> None:
    raw = tiny_raw(rounds=2, clients={"count": 2, "per_round": {"fraction": 1.0}})
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(raw))
    names = list(build(validate(raw)).clients.items())
    assert main(["certs", str(tmp_path / "certs"), "--host", "127.0.0.1", "--client", names[0][0],
                 "--client", names[1][0]]) == 0
    hashes = json.loads((tmp_path / "certs" / "tokens.json").read_text())
    assert set(hashes) == {n for n, _ in names} and all(len(h) == 64 for h in hashes.values())
    port = _port()
    (tmp_path / "server.yaml").write_text(yaml.safe_dump({
        "scenario": "scenario.yaml", "listen": f"127.0.0.1:{port}", "out": "run",
        "tls_cert": "certs/server.pem", "tls_key": "certs/server.key", "tokens": "certs/tokens.json",
        "wait_timeout": 60,
    }))
    server = subprocess.Popen([sys.executable, str(ROOT / "server" / "main.py"), "--config",
                               str(tmp_path / "server.yaml")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=ENV)
    procs = [server]
    try:
        def device(name: str, token_file: Path, data: Path) -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, str(ROOT / "clients" / "main.py"), "--server", f"127.0.0.1:{port}",
                 "--data", str(data), "--name", name, "--token-file", str(token_file),
                 "--ca", str(tmp_path / "certs" / "ca.pem")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)

        files = []
        for name, state in names:
            save_client_data(tmp_path / f"{name}.npz", state)
            files.append(tmp_path / f"{name}.npz")
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-token\n")
        intruder = device(names[0][0], wrong, files[0])
        procs.append(intruder)
        out, _ = intruder.communicate(timeout=60)
        assert intruder.returncode != 0 and "UNAUTHENTICATED" in out
        devices = [device(n, tmp_path / "certs" / f"{n}.token", f) for (n, _), f in zip(names, files, strict=True)]
        procs += devices
        assert server.wait(timeout=120) == 0, server.stdout.read()
        for d in devices:
            assert d.wait(timeout=30) == 0
        log = server.stdout.read()
        assert "wrong token" in log or "UNAUTHENTICATED" in log or "refused" in log.lower()
        # what an operator sees at the default log level, even through a pipe
        assert f"listening on 127.0.0.1:{port} (TLS)" in log and "0/2 clients connected" in log
        assert "2 clients connected; starting 2 rounds" in log and "round 2/2 ok" in log
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["skipped_rounds"] == 0


def test_client_deployable_refuses_to_run_without_tls_or_insecure(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "clients" / "main.py"), "--server", "127.0.0.1:1",
                        "--data", "x.npz", "--name", "a"], capture_output=True, text=True)
    assert r.returncode == 2 and "--ca" in r.stderr
