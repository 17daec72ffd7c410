"""The headline compression target on the shipped reference scenarios."""

from __future__ import annotations

from pathlib import Path

from fedkit.experiment import run_scenario
from fedkit.scenario import load

ROOT = Path(__file__).parents[2] / "scenarios"


def test_topk_ef_8bit_zstd_saves_100x_uplink_at_accuracy_parity(tmp_path: Path) -> None:
    dense = run_scenario(load(ROOT / "digits_dense.yaml", ["output.plot=false"]), tmp_path / "d")
    comp = run_scenario(load(ROOT / "digits_compressed.yaml", ["output.plot=false"]), tmp_path / "c")
    assert dense["final_accuracy"] >= 0.93
    assert comp["total_bytes_up"] * 100 <= dense["total_bytes_up"]
    assert comp["ratio_up"] >= 100
    assert comp["final_accuracy"] >= dense["final_accuracy"] - 0.015
    assert comp["total_bytes_down"] * 5 <= dense["total_bytes_down"]
