"""A client written from protos/ alone completes train and evaluate tasks on a real fedkit server.

Stubs are generated from the .proto with grpcio-tools into a temporary directory, as modules
that cannot collide with the installed ``fedkit`` package (``fedkit_pb2``); the client
(tests/e2e/conformance_client.py) runs in a subprocess whose PYTHONPATH holds only those stubs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fedkit.deploy import ServerOptions, serve
from fedkit.report.run_dir import load_params, read_metrics
from fedkit.scenario import validate
from fedkit.scenario.build import build_server
from fedkit.transport.security import TokenAuth, new_token
from tests.conftest import tiny_raw

grpc_tools = pytest.importorskip("grpc_tools")
pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("conformance_client.py")


def _stubs(out: Path) -> None:
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos/fedkit/v1'}",
         f"--python_out={out}", f"--grpc_python_out={out}", "fedkit.proto"],
        check=True, cwd=out,
    )
    assert sorted(p.name for p in out.iterdir()) == ["fedkit_pb2.py", "fedkit_pb2_grpc.py"]


def test_a_client_from_the_proto_alone_trains_and_evaluates(tmp_path: Path) -> None:
    source = CLIENT.read_text()
    assert not re.search(r"^\s*(import|from)\s+fedkit(\.|\s)", source, re.M)  # stubs only: fedkit_pb2
    foreign = tmp_path / "foreign"
    _stubs(foreign)
    shutil.copy(CLIENT, foreign / CLIENT.name)

    s = validate(tiny_raw(rounds=2, clients={"count": 1, "per_round": {"fraction": 1.0}},
                          model={"name": "logreg"}, evaluation={"federated": True},
                          server={"deadline_s": 60}))
    _, init = build_server(s)
    token = new_token()
    port_file = tmp_path / "port"
    result: dict = {}

    def server() -> None:
        opts = ServerOptions(insecure=True, auth=TokenAuth.from_tokens({"client-0": token}),
                             port_file=str(port_file), wait_timeout_s=60)
        try:
            result["summary"] = serve(s, tmp_path / "run", opts)
        except BaseException as e:  # noqa: BLE001  (reported below)
            result["error"] = e

    t = threading.Thread(target=server, daemon=True)
    t.start()
    for _ in range(600):
        if port_file.exists() or "error" in result:
            break
        threading.Event().wait(0.05)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(foreign)}
    proc = subprocess.run(
        [sys.executable, CLIENT.name, f"127.0.0.1:{port_file.read_text()}", "client-0", token],
        cwd=foreign, env=env, capture_output=True, text=True, timeout=90,
    )
    t.join(30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    did = json.loads(proc.stdout.strip().splitlines()[-1])
    assert did == {"train": 2, "evaluate": 2, "acks": 4, "fedkit_imported": False}
    assert "summary" in result, result.get("error")
    assert result["summary"]["rounds"] == 2 and result["summary"]["skipped_rounds"] == 0
    rows = read_metrics(tmp_path / "run")
    assert [r["fed_acc"] for r in rows] == [0.5, 0.5] and [r["train_loss"] for r in rows] == [1.0, 1.0]
    final, _ = load_params(tmp_path / "run" / "params.npz")
    for got, start in zip(final, init, strict=True):  # two FedAvg rounds of delta = -0.01 x global
        np.testing.assert_allclose(got, start * 0.99**2, rtol=1e-5, atol=1e-7)
