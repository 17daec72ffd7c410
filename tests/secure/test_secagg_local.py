from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fedkit.secure import field as fq
from fedkit.secure import secagg as sa
from fedkit.secure.secagg_local import run_local


def _xs(n: int, d: int, spec: fq.FieldSpec) -> dict[str, np.ndarray]:
    return {f"c{i}": np.full(d, i, spec.dtype) for i in range(n)}


def test_bytes_are_counted_per_client_and_masked_input_dominates() -> None:
    spec = fq.FieldSpec.for_clients(6, 1.0)
    d = 1000
    run = run_local(sa.SecAggConfig(dim=d, field=spec), 0, _xs(6, d, spec))
    assert run.aggregate.total.tolist() == [15] * d  # 0 + 1 + ... + 5
    for c in run.up_bytes:
        assert run.up_bytes[c] > 4 * d  # the masked vector, 4 bytes a value, plus keys/shares
        assert run.down_bytes[c] > 0 and run.client_s[c] > 0
    assert run.server_s > 0
    assert run.server_states == ()  # not kept unless asked


def test_dropped_clients_stop_counting_bytes() -> None:
    spec = fq.FieldSpec.for_clients(6, 1.0)
    run = run_local(sa.SecAggConfig(dim=10, field=spec), 0, _xs(6, 10, spec),
                    drop={"share-keys": ["c2"]})
    assert run.down_bytes["c2"] < run.down_bytes["c1"]
    assert run.aggregate.survivors == ("c0", "c1", "c3", "c4", "c5")


def test_unknown_stage_in_drop_is_refused() -> None:
    spec = fq.FieldSpec.for_clients(3, 1.0)
    with pytest.raises(ValueError, match="unknown stage"):
        run_local(sa.SecAggConfig(dim=2, field=spec), 0, _xs(3, 2, spec), drop={"oops": ["c0"]})


def test_secure_layer_imports_only_numpy_cryptography_and_rng() -> None:
    allowed = ("numpy", "cryptography", "fedkit.rng", "fedkit.secure", "fedkit")
    for path in (Path(__file__).parents[2] / "fedkit" / "secure").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in ("torch", "grpc") or (
                        top in ("fedkit", "numpy", "cryptography")
                        and not name.startswith(allowed)):
                    raise AssertionError(f"{path.name} imports {name}")
