"""A run directory stays consistent whatever instant a crash hits, and resume neither repeats
nor loses a round (the checkpoint is the commit point; see fedkit/report/run_dir.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkit.experiment import run_scenario
from fedkit.report import run_dir
from fedkit.scenario import validate
from tests.conftest import tiny_raw


class Crash(Exception):
    pass


def _inject(monkeypatch: pytest.MonkeyPatch, at: int) -> list[str]:
    """Make write number ``at`` (1-based) die half-way: a torn append or an unrenamed temp."""
    seen: list[str] = []
    real_atomic, real_append = run_dir._atomic_write, run_dir._append

    def atomic(path: Path, data: bytes) -> None:
        seen.append(path.name)
        if len(seen) == at:
            path.with_name(path.name + ".tmp").write_bytes(data[: len(data) // 2])
            raise Crash(path.name)
        real_atomic(path, data)

    def append(path: Path, text: str) -> None:
        seen.append(path.name)
        if len(seen) == at:
            real_append(path, text[: len(text) // 2])
            raise Crash(path.name)
        real_append(path, text)

    monkeypatch.setattr(run_dir, "_atomic_write", atomic)
    monkeypatch.setattr(run_dir, "_append", append)
    return seen


def _rounds(path: Path, name: str) -> list[int]:
    return [json.loads(line)["round"] for line in (path / name).read_text().splitlines()]


def test_a_crash_at_every_write_resumes_to_the_same_run(tmp_path: Path, monkeypatch) -> None:
    s = validate(tiny_raw(rounds=3))
    ref = run_scenario(s, tmp_path / "ref")
    clients_ref = _rounds(tmp_path / "ref", "clients.jsonl")
    with monkeypatch.context() as m:
        writes = _inject(m, at=10_000)
        run_scenario(s, tmp_path / "count")
    assert len(writes) >= 3 * 3 + 4  # scenario, model, 3 x (checkpoint, clients, metrics), final
    for at in range(1, len(writes) + 1):
        out = tmp_path / f"crash-{at}"
        with monkeypatch.context() as m:
            _inject(m, at)
            with pytest.raises(Crash):
                run_scenario(s, out)
        resumable = (out / "checkpoint.npz").exists()
        summary = run_scenario(s, out, resume=resumable, overwrite=not resumable)
        assert _rounds(out, "metrics.jsonl") == [1, 2, 3], f"crash at write {at} ({writes[at - 1]})"
        assert _rounds(out, "clients.jsonl") == clients_ref, f"crash at write {at}"
        assert summary["rounds"] == 3
        assert summary["params_sha256"] == ref["params_sha256"]
        assert summary["total_bytes_up"] == ref["total_bytes_up"]


def test_dropout_is_reproducible_across_runs_and_resume(tmp_path: Path, monkeypatch) -> None:
    import torch

    s = validate(tiny_raw(rounds=3, model={"name": "mlp", "hidden": [32], "dropout": 0.5}))
    a = run_scenario(s, tmp_path / "a")
    torch.manual_seed(12345)  # the global generator's state must not matter
    b = run_scenario(s, tmp_path / "b")
    assert a["params_sha256"] == b["params_sha256"]
    with monkeypatch.context() as m:
        _inject(m, at=6)  # dies inside round 2
        with pytest.raises(Crash):
            run_scenario(s, tmp_path / "c")
    c = run_scenario(s, tmp_path / "c", resume=True)
    assert c["params_sha256"] == a["params_sha256"]
    other = run_scenario(validate(tiny_raw(rounds=3, seed=4, model={"name": "mlp", "hidden": [32], "dropout": 0.5})),
                         tmp_path / "d")
    assert other["params_sha256"] != a["params_sha256"]


def test_time_to_target_in_simulated_seconds_and_rounds() -> None:
    rows = [{"round": 1, "sim_time_s": 60.0, "test_acc": 0.4}, {"round": 2, "sim_time_s": 120.0},
            {"round": 3, "sim_time_s": 180.0, "test_acc": 0.61}, {"round": 4, "sim_time_s": 240.0, "test_acc": 0.7}]
    hit = run_dir.time_to_target(rows, 0.6)
    assert hit == {"target_acc": 0.6, "time_to_target_s": 180.0, "rounds_to_target": 3}
    assert run_dir.time_to_target(rows, 0.9)["time_to_target_s"] is None
    assert run_dir.time_to_target(rows, None) == {}
    s = run_dir.summarize(rows, [], 0, "x", target_acc=0.6)
    assert s["sim_time_s"] == 240.0 and s["rounds_to_target"] == 3
