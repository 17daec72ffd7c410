"""HF ``task: causal-lm`` (a tiny Llama with its own tokenizer, text from text_lm) and ``task:
image-classification`` (a tiny ViT on 8x8 digits): LoRA runs end to end, and the causal LM's
merged export loads back in transformers with the same logits."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.cli import main
from fedkit.experiment import load_model, run_scenario
from fedkit.report.run_dir import read_metrics
from fedkit.scenario import ScenarioError, validate

CHARS = string.ascii_lowercase + ".,"
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS, *("##" + c for c in CHARS)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama whose folder holds its tokenizer (a character-level WordPiece)."""
    from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(str(path))
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two text files (two natural groups) of sentences from a tiny grammar: learnable fast."""
    path = tmp_path_factory.mktemp("corpus")
    gen = np.random.default_rng(0)
    for name, nouns in (("cats", ["cat", "mat", "hat"]), ("dogs", ["dog", "log", "fog"])):
        text = " ".join(f"the {gen.choice(nouns)} sat on the {gen.choice(nouns)}." for _ in range(120))
        (path / f"{name}.txt").write_text(text)
    return path


def lm_raw(folder: Path, corpus: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "tiny-llama-lora", "seed": 1, "rounds": 2, "clients": {"count": 2},
        "data": {"dataset": {"name": "text_lm", "files": str(corpus), "tokenizer": str(folder), "max_length": 16},
                 "partition": {"name": "natural"}},
        "model": {"hf": str(folder), "task": "causal-lm"},
        "train": {"steps": 8, "batch_size": 8, "lr": 0.01, "optimizer": "adam"},
        "peft": {"method": "lora", "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
        "output": {"plot": False},
    }
    return s | over


def test_causal_lm_lora_lowers_perplexity_and_merged_export_loads_back(
        tiny_llama: Path, corpus: Path, tmp_path: Path) -> None:
    s = validate(lm_raw(tiny_llama, corpus))
    run_scenario(s, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    ppl = [r["test_perplexity"] for r in rows]
    assert ppl[-1] < ppl[0]
    assert ppl[0] < len(WORDS)  # already better than uniform after one round

    model = load_model(tmp_path / "run")
    from fedkit.data import load_dataset

    ds = load_dataset("text_lm", 1, files=str(corpus), tokenizer=str(tiny_llama), max_length=16)
    x = torch.from_numpy(ds.x_test[:4]).float()
    with torch.no_grad():
        want = model(x)
    assert want.shape == (4, 16, len(WORDS))
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x.long()).logits, want, rtol=1e-5, atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "merged"), local_files_only=True)) == len(WORDS)


def test_causal_lm_refuses_a_tokenizer_larger_than_the_model(tiny_llama: Path, corpus: Path) -> None:
    raw = lm_raw(tiny_llama, corpus)
    raw["data"]["dataset"]["tokenizer"] = "char"  # fedkit's 98-id vocabulary, the model has 61
    with pytest.raises(ScenarioError, match="vocabulary has 98 token ids"):
        validate(raw)
    with pytest.raises(ScenarioError, match="num_labels is for classification"):
        validate(lm_raw(tiny_llama, corpus, model={"hf": str(tiny_llama), "task": "causal-lm", "num_labels": 3}))


def test_gpt2_conv1d_projections_take_lora_and_adapters(tmp_path: Path, corpus: Path) -> None:
    """GPT-2's projections are transformers' Conv1D, not nn.Linear: both methods adapt them."""
    from transformers import BertTokenizer, GPT2Config, GPT2LMHeadModel

    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(str(tmp_path / "gpt2"))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=2, n_positions=64)
                    ).save_pretrained(str(tmp_path / "gpt2"))
    raw = lm_raw(tmp_path / "gpt2", corpus, rounds=1)
    raw["peft"]["lora"]["targets"] = ["c_attn"]
    run_scenario(validate(raw), tmp_path / "lora")
    assert read_metrics(tmp_path / "lora")[0]["test_perplexity"] < len(WORDS)
    raw["peft"] = {"method": "adapter", "adapter": {"dim": 4, "targets": ["mlp.c_proj"]}}
    from fedkit.scenario.build import build

    exp = build(validate(raw))
    assert [a.shape for a in exp.init_params] == [(4, 32), (4,), (32, 4), (32,)] * 2  # after c_proj, 2 layers


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-vit")
    ViTForImageClassification(cfg).vit.save_pretrained(str(path))  # a base: the head is new
    return path


def vit_raw(folder: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "tiny-vit-lora", "seed": 2, "rounds": 3, "clients": {"count": 2},
        "data": {"dataset": {"name": "digits"}, "partition": {"name": "iid"}},
        "model": {"hf": str(folder), "task": "image-classification", "num_labels": 10},
        "train": {"steps": 20, "batch_size": 32, "lr": 0.01, "optimizer": "adam"},
        "peft": {"method": "lora", "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
                 "train_also": ["classifier"]},
        "output": {"plot": False},
    }
    return s | over


def test_image_classification_lora_learns_digits(tiny_vit: Path, tmp_path: Path) -> None:
    run_scenario(validate(vit_raw(tiny_vit)), tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["test_acc"] > max(0.3, rows[0]["test_acc"] + 0.15)  # random base: LoRA + head learn


def test_image_classification_with_unshaped_pixels_is_refused(tiny_vit: Path) -> None:
    raw = vit_raw(tiny_vit)
    raw["data"]["dataset"] = {"name": "synthetic"}  # 60 features: not a 1x8x8 image
    with pytest.raises(ScenarioError, match="1x8x8 images"):
        validate(raw)
