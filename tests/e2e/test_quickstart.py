"""The quickstart as a user runs it: accuracy reached, run directory complete, reproducible."""

from __future__ import annotations

import json
from pathlib import Path

from fedkit.cli import main

ROOT = Path(__file__).parents[2]


def test_quickstart_reaches_90_percent_and_reproduces(tmp_path: Path) -> None:
    scenario = str(ROOT / "scenarios" / "quickstart.yaml")
    assert main(["run", scenario, "--out", str(tmp_path / "a"), "-q"]) == 0
    run = tmp_path / "a"
    for f in ("scenario.yaml", "metrics.jsonl", "summary.json", "params.npz", "curves.png"):
        assert (run / f).stat().st_size > 0, f
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_accuracy"] >= 0.90
    assert summary["rounds"] == 20 and summary["seed"] == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    for key in ("train_loss", "test_acc", "test_loss", "clients_sampled", "clients_finished",
                "bytes_down", "bytes_up", "wall_s"):
        assert key in rows[0], key
    assert rows[0]["clients_sampled"] == 10 and rows[0]["bytes_up"] > 0

    assert main(["run", scenario, "--out", str(tmp_path / "b"), "-q"]) == 0
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    strip = lambda d: {k: v for k, v in d.items() if not k.endswith("_s")}  # noqa: E731
    assert strip(again) == strip(summary)
