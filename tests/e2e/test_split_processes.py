"""Every split scheme over real processes (``--mode processes``: a server process, a client
process, the ``Split`` stream over loopback TLS) gives bit-identical final parameters, client
part and server part, and identical byte counts by category to the in-process run."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fedkit.experiment import run_scenario
from fedkit.launch import run_processes
from fedkit.scenario import validate
from tests.runtime.test_split_engine import CUTS, split_raw

pytestmark = pytest.mark.timeout(300)


def _bytes(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("bytes_")} for r in rows]


def test_every_scheme_is_bit_identical_in_processes(tmp_path: Path) -> None:
    scenarios = {
        scheme: validate(split_raw(scheme, split={"activations": "quant(bits=8)"} if scheme == "splitfed_v2" else {}))
        for scheme in CUTS
    }
    # the five clusters start side by side (process start-up dominates); in-process runs meanwhile
    with ThreadPoolExecutor(len(scenarios)) as pool:
        procs = {k: pool.submit(run_processes, s, tmp_path / f"{k}-procs", 1) for k, s in scenarios.items()}
        local = {k: run_scenario(s, tmp_path / f"{k}-inproc") for k, s in scenarios.items()}
        remote = {k: f.result() for k, f in procs.items()}
    for k in scenarios:
        a, b = local[k], remote[k]
        assert b["rounds"] == a["rounds"] == 2, k
        assert b["params_sha256"] == a["params_sha256"], k  # the client part
        assert b["server_params_sha256"] == a["server_params_sha256"], k  # the server part
        got, want = _bytes(tmp_path / f"{k}-procs"), _bytes(tmp_path / f"{k}-inproc")
        assert got == want, k
        assert all(r["bytes_activations_up"] > 0 for r in got), k
