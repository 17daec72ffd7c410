"""The reference split scenarios learn as well as federated and centralized training.

Every ``scenarios/split_*.yaml`` (digits, the reference CNN, 10 clients, Dirichlet 0.5; one per
scheme, 8-bit activations/gradients, a bottleneck) is run from the command line as shipped
(``fedkit run``, in-process) and its final test accuracy must be within 2 points of the same model
trained by FedAvg on the same partition (``split_fedavg.yaml``) and within 3 points of centralized
training (``fedkit.centralized``: the same model on the union of the data, the same passes).
The bytes the scenarios advertise are checked from the same runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from fedkit.centralized import centralized
from fedkit.scenario import load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).parents[2]
SCENARIOS = {p.stem.removeprefix("split_"): p for p in sorted((ROOT / "scenarios").glob("split_*.yaml"))}
SCHEMES = ("vanilla", "splitfed_v1", "splitfed_v2", "ushape", "local_loss")


def _run(path: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "fedkit", "run", str(path), "--out", str(out), "--set", "output.plot=false",
           "--set", "output.checkpoint=false"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"{path.name}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("split-accuracy")
    workers = max(1, min(4, len(os.sched_getaffinity(0))))  # each run is single-threaded
    with ThreadPoolExecutor(workers) as pool:
        runs = {k: pool.submit(_run, p, base / k) for k, p in SCENARIOS.items()}
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # as fedkit run
        try:
            central = centralized(load(SCENARIOS["fedavg"]))["accuracy"]
        finally:
            torch.set_num_threads(before)
        out = {k: f.result() for k, f in runs.items()}
    return {"central": central, "runs": out}


def test_the_reference_set_is_complete() -> None:
    assert set(SCENARIOS) == {*SCHEMES, "fedavg", "quant8", "bottleneck"}
    for k, p in SCENARIOS.items():
        s = load(p)
        assert s.clients.count == 10 and s.data.partition == {"name": "dirichlet", "alpha": 0.5}
        assert s.data.dataset["name"] == "digits" and s.model == {"name": "cnn"}
        assert (s.split is None) == (k == "fedavg")
        # one partition, model and training for all: only the split section differs
        ref = load(SCENARIOS["fedavg"])
        assert (s.seed, s.rounds, s.train, s.strategy) == (ref.seed, ref.rounds, ref.train, ref.strategy)


def test_every_scheme_matches_fedavg_and_centralized(results: dict[str, Any]) -> None:
    central, runs = results["central"], results["runs"]
    acc = {k: r["final_accuracy"] for k, r in runs.items()}
    table = f"centralized {100 * central:.2f}; " + ", ".join(f"{k} {100 * a:.2f}" for k, a in acc.items())
    print(table)
    assert abs(acc["fedavg"] - central) <= 0.03, table
    for k in SCENARIOS:
        if k == "fedavg":
            continue
        assert abs(acc[k] - acc["fedavg"]) <= 0.02, f"{k} vs fedavg: {table}"
        assert abs(acc[k] - central) <= 0.03, f"{k} vs centralized: {table}"


def test_bytes_per_scheme(results: dict[str, Any]) -> None:
    runs = results["runs"]
    v1 = runs["splitfed_v1"]
    assert runs["local_loss"]["total_bytes_gradients_down"] == 0  # upstream only
    assert runs["ushape"]["total_bytes_labels_up"] == 0  # labels stay on the client
    assert runs["ushape"]["total_bytes_gradients_up"] > 0 and runs["ushape"]["total_bytes_activations_down"] > 0
    for k in ("quant8", "bottleneck"):  # 8-bit values, or 4 of 16 channels: about 4x fewer bytes
        for cat in ("activations_up", "gradients_down"):
            ratio = v1[f"total_bytes_{cat}"] / runs[k][f"total_bytes_{cat}"]
            assert 3.5 < ratio <= 4.0, (k, cat, ratio)
    assert runs["fedavg"]["total_bytes_up"] > 10 * v1["total_bytes_up"]  # the client part is conv1 only
