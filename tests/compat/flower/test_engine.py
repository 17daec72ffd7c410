"""``fedkit run SCENARIO --engine flower``: the same scenario on Flower's simulation engine (Ray,
2 workers) gives what fedkit's own engine gives: same partition, same sampled clients, same
keyed local training, same aggregation (the parameters even match bit for bit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("flwr", reason="--engine flower needs the extra: pip install 'fedkit[flower]'")

from fedkit.cli import main  # noqa: E402
from fedkit.compat.flower.engine import run_flower  # noqa: E402
from fedkit.experiment import run_scenario  # noqa: E402
from fedkit.scenario import ScenarioError, validate  # noqa: E402
from tests.conftest import tiny_raw  # noqa: E402


def _raw() -> dict:
    # clients come back in later rounds (half sampled per round): their error-feedback memory
    # must have travelled with them in Flower's Context
    return tiny_raw(
        rounds=4, strategy={"name": "fedadam", "lr": 0.05},
        compression={"uplink": "ef:topk(ratio=0.2)|quant(bits=8)|zstd"},
        evaluation={"federated": True, "every": 2},
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::FutureWarning:ray")
def test_the_flower_engine_matches_fedkits_run(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Flower's simulation needs Ray: pip install 'fedkit[flower]'")
    raw = _raw()
    ref = run_scenario(validate(raw), tmp_path / "fedkit")
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(raw))
    out = tmp_path / "flower"
    assert main(["run", str(scen), "--engine", "flower", "--workers", "2", "--out", str(out), "-q"]) == 0
    got = json.loads((out / "summary.json").read_text())
    assert got["engine"] == "flower" and got["rounds"] == 4 and got["skipped_rounds"] == 0
    assert abs(got["final_accuracy"] - ref["final_accuracy"]) <= 0.02  # within noise ...
    assert got["params_sha256"] == ref["params_sha256"]  # ... and in fact identical
    assert got["total_bytes_up"] == ref["total_bytes_up"]  # the same fedkit frames went up
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(r) for r in (tmp_path / "fedkit" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, want, strict=True):  # same clients, same training, same evaluations
        assert a["clients_sampled"] == b["clients_sampled"] and a["train_loss"] == pytest.approx(b["train_loss"])
        assert a.get("fed_acc") == pytest.approx(b.get("fed_acc"), nan_ok=True)
    sampled = {(r["round"], r["client"]) for r in map(json.loads, (out / "clients.jsonl").read_text().splitlines())}
    ref_sampled = {(r["round"], r["client"]) for r in map(json.loads, (tmp_path / "fedkit" / "clients.jsonl").read_text().splitlines())
                   if r["kind"] == "train"}
    assert sampled == ref_sampled
    assert rows[-1]["wire_bytes_up"] > rows[-1]["bytes_up"]  # Flower's envelopes on top of the frames


def test_what_the_flower_engine_cannot_run_is_refused_by_name(tmp_path: Path) -> None:
    raw = tiny_raw(compression={"downlink": "quant(bits=8)"}, server={"on_too_few": "retry"})
    with pytest.raises(ScenarioError, match="compression.downlink.*\n.*server.on_too_few"):
        run_flower(validate(raw), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    raw = tiny_raw(strategy={"name": "fedbuff", "k": 2})
    del raw["clients"]["per_round"]
    with pytest.raises(ScenarioError, match="strategy: 'fedbuff' is asynchronous"):
        run_flower(validate(raw), tmp_path / "run")
    raw = tiny_raw(participation={"kind": "bernoulli", "probs": 0.5})
    with pytest.raises(ScenarioError, match="participation: simulated by fedkit"):
        run_flower(validate(raw), tmp_path / "run")
    raw = tiny_raw(clients={"count": 4, "per_round": {"fraction": 1.0}}, privacy={"secagg": {}},
                   attacks=[{"kind": "sign_flip", "fraction": 0.25}])
    with pytest.raises(ScenarioError, match="privacy.secagg: runs as fedkit's.*\n.*attacks: sign_flip"):
        run_flower(validate(raw), tmp_path / "run")
    raw = tiny_raw(privacy={"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}})
    with pytest.raises(ScenarioError, match="privacy.dp: the clip mod"):
        run_flower(validate(raw), tmp_path / "run")


def test_the_cli_refuses_flower_with_processes_or_resume(tmp_path: Path, capsys) -> None:
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(tiny_raw()))
    assert main(["run", str(scen), "--engine", "flower", "--mode", "processes"]) == 2
    assert "in-process only" in capsys.readouterr().err
