"""LoRA on a tiny transformers model: in-process and ``--mode processes`` give bit-identical
adapters (each client process loads the folder itself; only adapters travel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkit.experiment import run_scenario
from fedkit.launch import run_processes
from fedkit.scenario import validate

from .conftest import hf_raw, token_data

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_processes_give_bit_identical_adapters(tiny_bert: Path, tmp_path: Path) -> None:
    s = validate(hf_raw(tiny_bert, token_data(tmp_path / "tokens.npz")))
    a = run_scenario(s, tmp_path / "inproc")
    b = run_processes(s, tmp_path / "procs", workers=2)
    assert b["params_sha256"] == a["params_sha256"]
    assert b["total_bytes_up"] == a["total_bytes_up"] and b["total_bytes_down"] == a["total_bytes_down"]
