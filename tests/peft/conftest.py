"""A tiny BERT written with save_pretrained and a token-id dataset for it (nothing downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

VOCAB, SEQ, CLASSES = 50, 12, 3


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=CLASSES, pad_token_id=0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(cfg).bert.save_pretrained(path)  # a base model: the head is new
    return path


def token_data(path: Path, n: int = 90, seed: int = 0) -> Path:
    """Padded token ids whose label is told by one marker token (learnable in a few steps)."""
    gen = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    x = gen.integers(5, VOCAB, size=(n, SEQ))
    x[:, 0] = 1 + y  # the marker
    lengths = gen.integers(4, SEQ + 1, size=n)
    x[np.arange(SEQ)[None, :] >= lengths[:, None]] = 0  # pad id 0
    np.savez(path, x=x.astype(np.int64), y=y.astype(np.int64))
    return path


def hf_raw(folder: Path, data: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "tiny-bert-lora", "seed": 1, "rounds": 2,
        "clients": {"count": 2},
        "data": {"dataset": {"name": "npz", "path": str(data)}, "partition": {"name": "iid"}},
        "model": {"hf": str(folder), "task": "sequence-classification", "num_labels": CLASSES},
        "train": {"steps": 2, "batch_size": 8, "lr": 0.01, "optimizer": "adam"},
        "peft": {"method": "lora", "lora": {"r": 4, "alpha": 8, "targets": ["query", "value"]},
                 "train_also": ["classifier"]},
        "output": {"plot": False},
    }
    return s | over
