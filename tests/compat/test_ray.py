"""The Ray executor on a local 2-CPU Ray (started once for this module): bit-identical params to
sequential, a killed actor loses only its client's task; a clear error without Ray."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from tests.conftest import tiny_raw
from tests.sim.executors import DIE_SIZE, DRIVER_PID, run_kind, unique_size_client

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'fedkit[ray]')"
)
RAY = {"kind": "ray", "workers": 2}
KILL = tiny_raw(rounds=2, clients__per_round={"fraction": 1.0},
                train={"epochs": 1, "batch_size": 16, "lr": 0.1, "fn": "tests.sim.executors:fail_for_size"})


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    # set before Ray starts, so that its workers inherit them
    os.environ[DRIVER_PID] = str(os.getpid())
    os.environ[DIE_SIZE] = str(unique_size_client(KILL)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.pop(DRIVER_PID, None)
        os.environ.pop(DIE_SIZE, None)


@needs_ray
def test_ray_params_bit_identical_to_sequential(local_ray: None) -> None:
    raw = tiny_raw(rounds=2, clients__per_round={"fraction": 0.67}, compression={"uplink": "ef:topk(ratio=0.1)"})
    seq, seq_rows = run_kind(raw)
    on_ray, rows = run_kind(raw, RAY)
    assert all(np.array_equal(a, b) for a, b in zip(seq, on_ray, strict=True))
    assert [r["client"] for r in rows] == [r["client"] for r in seq_rows]


@needs_ray
def test_a_killed_actor_loses_only_its_clients_task(local_ray: None) -> None:
    victim, _ = unique_size_client(KILL)
    seq, _ = run_kind(KILL)  # here the victim's task raises instead: the same round otherwise
    on_ray, rows = run_kind(KILL, RAY)
    assert all(np.array_equal(a, b) for a, b in zip(seq, on_ray, strict=True))
    failed = [r for r in rows if r["status"] != "ok"]
    assert [r["client"] for r in failed] == [victim, victim]
    assert all("worker lost: ray actor died" in r["reason"] for r in failed)


def test_without_ray_a_clear_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedkit.compat.ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'fedkit\[ray\]'"):
        import_ray()


def test_only_compat_imports_ray() -> None:
    import ast
    from pathlib import Path

    pkg = Path(__file__).parents[2] / "fedkit"
    bad = []
    for path in pkg.rglob("*.py"):
        if "compat" in path.relative_to(pkg).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad += [f"{path.relative_to(pkg)}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not bad
