"""``fedkit pretrain`` and ``model: {checkpoint: DIR}``: save, load, validate, transfer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fedkit.centralized import centralized
from fedkit.cli import main
from fedkit.models import build_model, get_params
from fedkit.models.checkpoint import CONFIG, WEIGHTS, CheckpointError, save_checkpoint
from fedkit.pretrain import pretrain
from fedkit.scenario import ScenarioError, validate
from fedkit.scenario.build import DataError, build_server
from fedkit.scenario.check import check_data

SOURCE, TARGET = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


def _raw(classes: list[int], model: dict[str, Any], epochs: int, **over: Any) -> dict[str, Any]:
    return {
        "name": "vit", "seed": 0, "rounds": 1, "clients": {"count": 1},
        "data": {"dataset": {"name": "digits", "classes": classes}},
        "model": model, "train": {"epochs": epochs, "batch_size": 32, "optimizer": "adam", "lr": 0.003},
        "output": {"plot": False}, **over,
    }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("pretrain") / "model"
        return pretrain(validate(_raw(SOURCE, {"name": "vit_tiny"}, 12)), out)
    finally:
        torch.set_num_threads(before)


def test_pretraining_learns_the_source_split(ckpt: tuple[Path, dict[str, Any]]) -> None:
    path, metrics = ckpt
    assert metrics["after"]["accuracy"] > 0.9 and metrics["before"]["accuracy"] < 0.4
    assert (path / WEIGHTS).is_file()
    config = json.loads((path / CONFIG).read_text())
    assert config["model"] == {"name": "vit_tiny", "patch": 2, "dim": 32, "depth": 2, "heads": 4, "mlp_ratio": 2.0,
                               "prompt_tokens": 0, "deep_prompt": False}  # every option spelled out
    assert config["input_shape"] == [64] and config["num_classes"] == 10
    assert config["trained"]["test"]["after"]["accuracy"] == metrics["after"]["accuracy"]


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path: Path) -> None:
    spec = {"name": "vit_tiny", "dim": 16, "depth": 1}
    m = build_model(spec, (1, 8, 8), 10)
    save_checkpoint(m, spec, (1, 8, 8), 10, tmp_path / "m")
    loaded = build_model({"name": "vit_tiny", "checkpoint": str(tmp_path / "m")}, (1, 8, 8), 10)
    x = torch.rand(6, 1, 8, 8)
    assert torch.equal(m.eval()(x), loaded.eval()(x))
    lm = build_model({"name": "char_lm", "dim": 16, "depth": 1}, (12,), 30)
    save_checkpoint(lm, {"name": "char_lm", "dim": 16, "depth": 1}, (12,), 30, tmp_path / "lm")
    tokens = torch.randint(0, 30, (3, 12)).float()
    again = build_model({"name": "char_lm", "checkpoint": str(tmp_path / "lm")}, (12,), 30)
    assert torch.equal(lm.eval()(tokens), again.eval()(tokens))


def test_a_checkpoint_trained_on_from_a_checkpoint_records_its_architecture(tmp_path: Path) -> None:
    spec = {"name": "vit_tiny", "dim": 16, "depth": 1}
    save_checkpoint(build_model(spec, (64,), 10), spec, (64,), 10, tmp_path / "a")
    on = {"name": "vit_tiny", "checkpoint": str(tmp_path / "a")}
    save_checkpoint(build_model(on, (64,), 10), on, (64,), 10, tmp_path / "b")
    config = json.loads((tmp_path / "b" / CONFIG).read_text())["model"]
    assert config["dim"] == 16 and config["depth"] == 1 and "checkpoint" not in config


def test_fine_tuning_scenario_starts_from_the_checkpoint(ckpt: tuple[Path, dict[str, Any]]) -> None:
    path, _ = ckpt
    s = validate(_raw(TARGET, {"name": "vit_tiny", "checkpoint": str(path)}, 1))
    _, params = build_server(s)
    saved = build_model({"name": "vit_tiny", "checkpoint": str(path)}, (64,), 10)
    assert all((a == b).all() for a, b in zip(params, get_params(saved), strict=True))
    scratch = build_server(validate(_raw(TARGET, {"name": "vit_tiny"}, 1)))[1]
    assert not all((a == b).all() for a, b in zip(params, scratch, strict=True))


def test_prompts_on_top_of_a_checkpoint_keep_their_init(ckpt: tuple[Path, dict[str, Any]]) -> None:
    path, _ = ckpt
    spec = {"name": "vit_tiny", "checkpoint": str(path), "prompt_tokens": 2, "deep_prompt": True}
    s = validate(_raw(TARGET, spec, 1))
    base = build_model({"name": "vit_tiny", "checkpoint": str(path)}, (64,), 10).state_dict()
    m = build_model(s.model, (64,), 10)
    assert m.state_dict()["prompt"].shape == (2, 2, 32)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in base.items())


def test_pre_training_transfers_to_unseen_classes(ckpt: tuple[Path, dict[str, Any]]) -> None:
    """Fine-tuned on digits 5-9 for 3 epochs, the model pre-trained on 0-4 beats one from scratch."""
    path, _ = ckpt
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tuned = centralized(validate(_raw(TARGET, {"name": "vit_tiny", "checkpoint": str(path)}, 3)))
        scratch = centralized(validate(_raw(TARGET, {"name": "vit_tiny"}, 3)))
    finally:
        torch.set_num_threads(before)
    assert tuned["accuracy"] > scratch["accuracy"] + 0.2, (tuned, scratch)


def test_reinit_head_starts_a_new_classifier(tmp_path: Path) -> None:
    spec = {"name": "vit_tiny", "dim": 16, "depth": 1}
    five = build_model(spec, (64,), 5)
    save_checkpoint(five, spec, (64,), 5, tmp_path)
    with pytest.raises(CheckpointError, match=r"has 5 classes .*reinit: \[head\]"):
        build_model({"name": "vit_tiny", "checkpoint": str(tmp_path)}, (64,), 10)
    ten = build_model({"name": "vit_tiny", "checkpoint": str(tmp_path), "reinit": ["head"]}, (64,), 10)
    got, base = ten.state_dict(), five.state_dict()
    assert got["head.weight"].shape == (10, 16)
    assert all(torch.equal(v, got[k]) for k, v in base.items() if not k.startswith("head."))
    with pytest.raises(CheckpointError, match="no module 'haed' in the model .*did you mean 'head'"):
        build_model({"name": "vit_tiny", "checkpoint": str(tmp_path), "reinit": ["haed"]}, (64,), 10)
    assert "model.reinit must be a list" in _problems(_raw(TARGET, {"name": "vit_tiny", "checkpoint": str(tmp_path),
                                                                    "reinit": "head"}, 1))
    assert "unknown parameter 'reinit'" in _problems(_raw(TARGET, {"name": "vit_tiny", "reinit": ["head"]}, 1))


def _problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as e:
        validate(raw)
    return str(e.value)


def test_checkpoint_that_does_not_fit_is_a_validation_error(ckpt: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path = str(ckpt[0])
    msg = _problems(_raw(TARGET, {"name": "cnn", "checkpoint": path}, 1))
    assert "holds model 'vit_tiny', not 'cnn'" in msg
    msg = _problems(_raw(TARGET, {"name": "vit_tiny", "checkpoint": path, "dim": 64}, 1))
    assert "model.dim=64" in msg and "dim=32" in msg
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _problems(_raw(TARGET, {"name": "vit_tiny", "checkpoint": str(tmp_path / "empty")}, 1))
    assert "unknown parameter 'dimm'" in _problems(_raw(TARGET, {"name": "vit_tiny", "checkpoint": path, "dimm": 3}, 1))
    # the data's shape or classes differ from the checkpoint's: a data problem (fedkit validate)
    flat_false = _raw(TARGET, {"name": "vit_tiny", "checkpoint": path}, 1)
    flat_false["data"]["dataset"]["flat"] = False
    [problem] = check_data(validate(flat_false))
    assert "inputs of shape (64,)" in problem and "(1, 8, 8)" in problem
    with pytest.raises(DataError, match="model.checkpoint"):
        build_server(validate(flat_false))


def test_missing_checkpoint_is_exit_2_naming_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw(TARGET, {"name": "vit_tiny", "checkpoint": str(tmp_path / "nope")}, 1)
    s = validate(raw)  # the schema passes: a fresh clone has not pre-trained yet
    [problem] = check_data(s)
    assert "no checkpoint folder" in problem and "fedkit pretrain" in problem
    f = tmp_path / "ft.yaml"
    f.write_text(yaml.safe_dump(raw | {"output": {"dir": str(tmp_path / "runs"), "plot": False}}))
    assert main(["run", str(f), "-q"]) == 2
    assert "no checkpoint folder" in capsys.readouterr().err
    assert main(["validate", str(f)]) == 2


def test_cli_pretrain_writes_and_keeps_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw(SOURCE, {"name": "vit_tiny", "dim": 8, "depth": 1, "heads": 2}, 1)
    raw["output"] = {"dir": str(tmp_path / "runs"), "plot": False}
    f = tmp_path / "pre.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert main(["pretrain", str(f)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert (tmp_path / "runs" / "vit" / "model" / WEIGHTS).is_file()
    assert main(["pretrain", str(f)]) == 2  # an existing checkpoint is not overwritten ...
    assert "--force" in capsys.readouterr().err
    assert main(["pretrain", str(f), "--force", "--out", str(tmp_path / "other")]) == 0  # ... unless asked


def test_corrupt_weights_are_refused(tmp_path: Path) -> None:
    spec = {"name": "vit_tiny", "dim": 8, "depth": 1, "heads": 2}
    save_checkpoint(build_model(spec, (64,), 10), spec, (64,), 10, tmp_path)
    (tmp_path / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_model({"name": "vit_tiny", "checkpoint": str(tmp_path)}, (64,), 10)


def test_char_lm_pretrains_on_pydoc_and_transfers_to_docstrings(tmp_path: Path) -> None:
    """Pre-trained on the language reference, the LM starts fine-tuning on stdlib docstrings with
    a far lower perplexity than from scratch (fedkit/data/text.py's corpora)."""
    pytest.importorskip("fedkit.data.text")
    from fedkit.data import load_dataset
    from fedkit.models import LocalData, evaluate, init_model

    model = {"name": "char_lm", "dim": 32, "depth": 1, "heads": 2}
    raw = {"name": "lm", "seed": 0, "rounds": 1, "clients": {"count": 1},
           "data": {"dataset": {"name": "pydoc_topics", "max_length": 32}}, "model": model,
           "train": {"steps": 100, "batch_size": 32, "optimizer": "adam", "lr": 0.005}, "output": {"plot": False}}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path, metrics = pretrain(validate(raw), tmp_path / "lm")
        ds = load_dataset("docstrings_lm", 0, packages=["json", "email"], max_length=32)
        test = LocalData(torch.from_numpy(ds.x_test[:200]).float(), torch.from_numpy(ds.y_test[:200]).long())
        tuned = evaluate(build_model({"name": "char_lm", "checkpoint": str(path)}, ds.input_shape, ds.num_classes), test)
        scratch = evaluate(init_model(model, ds.input_shape, ds.num_classes, 0), test)
    finally:
        torch.set_num_threads(before)
    assert metrics["after"]["perplexity"] < 0.25 * metrics["before"]["perplexity"]
    assert tuned["perplexity"] < 0.25 * scratch["perplexity"]
