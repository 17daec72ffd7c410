"""SFPrompt in-process and ``--mode processes``: bit-identical prompts + tail, equal bytes (each
client process loads the checkpoint itself; the body runs in the server process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkit.experiment import run_scenario
from fedkit.launch import run_processes
from fedkit.scenario import validate

from .test_sfprompt import ckpt, raw  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_processes_give_bit_identical_prompts_and_tail(ckpt: Path, tmp_path: Path) -> None:  # noqa: F811
    s = validate(raw(ckpt))
    a = run_scenario(s, tmp_path / "inproc")
    b = run_processes(s, tmp_path / "procs", workers=2)
    assert b["params_sha256"] == a["params_sha256"]
    assert b["total_bytes_up"] == a["total_bytes_up"] and b["total_bytes_down"] == a["total_bytes_down"]
    assert b["final_accuracy"] == a["final_accuracy"]
    for run in ("inproc", "procs"):  # every client's task ran (a failed one would also shift the sums)
        tasks = [json.loads(line) for line in (tmp_path / run / "clients.jsonl").read_text().splitlines()]
        assert len(tasks) == 6 and all(t["status"] == "ok" for t in tasks), run
