from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedkit.cli import main
from tests.conftest import tiny_raw


def _write(tmp_path: Path, raw: dict, name: str = "s.yaml") -> str:
    f = tmp_path / name
    f.write_text(yaml.safe_dump(raw))
    return str(f)


def test_validate_ok_and_bad_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _write(tmp_path, tiny_raw())
    raw = tiny_raw()
    raw["clients"]["cuont"] = raw["clients"].pop("count")
    bad = _write(tmp_path, raw, "bad.yaml")
    assert main(["validate", good]) == 0
    assert main(["validate", good, bad]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: clients.cuont: unknown key 'cuont' (did you mean 'count'?)" in err


def test_run_with_bad_file_exits_2(tmp_path: Path) -> None:
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2


def test_describe_shows_per_client_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["describe", _write(tmp_path, tiny_raw())]) == 0
    text = capsys.readouterr().out
    assert "client-0" in text and "client-5" in text and "label_skew" in text
    assert "valid cuts" not in text  # only a split scenario lists cuts


def test_describe_lists_the_cuts_of_a_split_scenario(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    split = {"scheme": "splitfed_v1", "cut": "2", "bottleneck": {"dim": 4}}
    assert main(["describe", _write(tmp_path, tiny_raw(model={"name": "cnn"}, split=split))]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("cut "))
    assert "client params" in lines[head] and "bytes/sample" in lines[head] and "client FLOPs" in lines[head]
    rows = {line.split()[0]: line.split() for line in lines[head + 2 : head + 9]}
    assert list(rows) == ["0", "1", "2", "3", "4", "5", "6"]  # the cnn's valid cuts, in forward order
    # cut 2: conv1 (160 params) on the client, 9,770 on the server, 16x8x8 floats = 4.1 kB, 3% of FLOPs
    assert rows["2"][1:6] == ["160", "9,770", "16x8x8", "4.1kB", "3.0%"]
    assert any("splitfed_v1 at cut 2, bottleneck dim 4: 4x8x8 (1024 B/sample)" in line for line in lines)


def test_compare_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    s = _write(tmp_path, tiny_raw())
    assert main(["run", s, "--out", str(tmp_path / "a"), "-q"]) == 0
    assert main(["run", s, "--out", str(tmp_path / "b"), "-q", "--set", "strategy.name=fedavgm"]) == 0
    plot = tmp_path / "cmp.png"
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 0
    out = capsys.readouterr().out
    assert "final" in out and "│ b " in out and str(tmp_path / "b") not in out  # run names, not paths
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert not list(Path.cwd().glob("compare.png"))  # a plot only where asked
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert len(summary["params_sha256"]) == 64


def test_resume_continues_to_the_same_params(tmp_path: Path) -> None:
    s = _write(tmp_path, tiny_raw(rounds=4, strategy={"name": "fedadam"}))
    assert main(["run", s, "--out", str(tmp_path / "full"), "-q"]) == 0
    assert main(["run", s, "--out", str(tmp_path / "part"), "-q", "--set", "rounds=2"]) == 0
    assert main(["run", s, "--out", str(tmp_path / "part"), "-q", "--resume"]) == 0
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    part = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert part["params_sha256"] == full["params_sha256"] and part["rounds"] == 4


def test_a_finished_run_is_never_replaced_by_accident(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _write(tmp_path, tiny_raw(rounds=1))
    out = tmp_path / "run"
    assert main(["run", s, "--out", str(out), "-q"]) == 0
    before = (out / "summary.json").read_text()
    assert main(["run", s, "--out", str(out), "-q"]) == 2
    assert "already holds a run; --resume continues it, --overwrite replaces it" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    assert main(["run", s, "--out", str(out), "-q", "--overwrite"]) == 0
    assert main(["run", s, "--out", str(tmp_path / "none"), "-q", "--resume"]) == 2
    # without --out, a new directory next to the earlier ones
    monkeypatch.chdir(tmp_path)
    assert main(["run", s, "-q"]) == 0 and main(["run", s, "-q"]) == 0
    assert (tmp_path / "runs" / "tiny" / "summary.json").exists()
    assert (tmp_path / "runs" / "tiny-2" / "summary.json").exists()


def test_resume_with_a_changed_scenario_is_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    s = _write(tmp_path, tiny_raw(rounds=2))
    out = str(tmp_path / "run")
    assert main(["run", s, "--out", out, "-q"]) == 0
    original = (tmp_path / "run" / "scenario.yaml").read_text()
    changed = ["--set", "train.lr=0.5", "--set", "rounds=3"]
    assert main(["run", s, "--out", out, "-q", "--resume", *changed]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["run", s, "--out", out, "-q", "--resume", "--set", "rounds=3"]) == 0  # extending is fine
    assert main(["run", s, "--out", out, "-q", "--resume", "--force", "--set", "rounds=4",
                 "--set", "train.lr=0.5"]) == 0
    assert (tmp_path / "run" / "scenario.yaml").read_text() == original  # the original is kept
    kept = yaml.safe_load((tmp_path / "run" / "scenario.resumed-3.yaml").read_text())
    assert kept["train"]["lr"] == 0.5


def test_validate_checks_the_data_too(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    s = _write(tmp_path, tiny_raw())
    assert main(["validate", s, "--set", "strategy.name=krum", "--set", "strategy.f=4"]) == 2
    assert "krum with f=4 needs n > 2f + 2" in capsys.readouterr().err
    npz = ["--set", "data.dataset.name=npz", "--set", f"data.dataset.path={tmp_path / 'none.npz'}"]
    assert main(["validate", s, *npz]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["validate", "--schema-only", s, *npz]) == 0
    assert main(["run", s, "--out", str(tmp_path / "r"), "-q", *npz]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_a_run_whose_every_update_is_refused_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = tiny_raw(rounds=6)
    raw["server"] = {"max_norm_ratio": 1e-9, "max_skipped_rounds": 3}
    out = tmp_path / "run"
    assert main(["run", _write(tmp_path, raw), "--out", str(out), "-q"]) == 1
    assert "3 consecutive rounds ended without a new model" in capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["status"].startswith("skipped") for r in rows)
    reasons = [json.loads(x).get("reason", "") for x in (out / "clients.jsonl").read_text().splitlines()]
    assert all("exceeds 1e-09 x the model's norm" in r for r in reasons)


def test_progress_lines_when_output_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", _write(tmp_path, tiny_raw(rounds=2)), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "round 1/2" in err and "round 2/2" in err


def test_describe_and_compare_show_the_devices_and_simulated_time(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    devices = {"profiles": {"phone": {"compute": {"samples_per_s": 400, "spread": 0.5}, "up_mbps": 5,
                                      "down_mbps": 20, "latency_ms": 60}}}
    s = _write(tmp_path, tiny_raw(rounds=2, devices=devices, evaluation={"target_acc": 0.05}))
    assert main(["describe", s]) == 0
    text = capsys.readouterr().out
    assert "speed samples/s p50" in text and "round s max" in text and "online fraction" in text
    assert main(["run", s, "--out", str(tmp_path / "a"), "-q", "--set", "output.plot=true"]) == 0
    assert (tmp_path / "a" / "curves.png").stat().st_size > 0
    assert main(["compare", str(tmp_path / "a"), "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["sim_time_s"] > 0 and summary["rounds_to_target"] == 1
    assert "sim s" in out and f"{summary['sim_time_s']:.1f}" in out


def test_run_line_of_a_split_scenario_reports_its_split_channel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The smashed data and gradients are a split run's largest traffic: the final line says so
    beside the model bytes (summary.json has them as total_bytes_activations_* / gradients_*)."""
    split = {"scheme": "vanilla", "cut": "2"}
    s = _write(tmp_path, tiny_raw(model={"name": "cnn"}, split=split, rounds=1))
    assert main(["run", s, "--out", str(tmp_path / "run")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "final accuracy" in x)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["total_bytes_activations_up"] > summary["total_bytes_up"]
    assert ", split channel " in line and line.index("on the wire") < line.index("split channel")
