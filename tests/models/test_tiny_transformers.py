"""fedkit's tiny transformers: shapes, PEFT-targetable names, causality, prompts, the LM loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedkit.models import (
    LocalData,
    TrainConfig,
    build_model,
    evaluate,
    init_model,
    keyed_torch,
    sgd_train,
)
from fedkit.models.tiny_transformers import prompt_names
from fedkit.models.train import IGNORE, task_loss
from fedkit.rng import rng


def _pydoc_blocks(length: int, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A small local char-level corpus from pydoc_data (ships with Python): (x, y, vocab)."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))[: n * length + 1]
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    blocks = ids[: n * length + 1].unfold(0, length + 1, length)
    return blocks[:, :-1].float(), blocks[:, 1:].long(), len(chars)


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8)])
def test_vit_classifies_flat_and_image_inputs(shape: tuple[int, ...]) -> None:
    m = build_model({"name": "vit_tiny"}, shape, 10)
    assert m(torch.rand(5, *shape)).shape == (5, 10)
    names = {n for n, _ in m.named_modules()}
    for target in ("blocks.0.attn.query", "blocks.0.attn.value", "blocks.1.mlp.fc1", "head"):
        assert target in names and isinstance(m.get_submodule(target), nn.Linear)


def test_vit_patch_must_divide_the_image() -> None:
    with pytest.raises(ValueError, match="patch=3 must divide"):
        build_model({"name": "vit_tiny", "patch": 3}, (64,), 10)
    with pytest.raises(ValueError, match="square flat input"):
        build_model({"name": "vit_tiny"}, (60,), 10)


def test_prompts_shallow_and_deep() -> None:
    shallow = build_model({"name": "vit_tiny", "prompt_tokens": 3}, (64,), 10)
    deep = build_model({"name": "vit_tiny", "prompt_tokens": 3, "deep_prompt": True, "depth": 3}, (64,), 10)
    assert prompt_names(shallow) == prompt_names(deep) == ["prompt"]
    assert tuple(shallow.state_dict()["prompt"].shape) == (1, 3, 32)
    assert tuple(deep.state_dict()["prompt"].shape) == (3, 3, 32)  # one set per block
    x = torch.rand(4, 64)
    for m in (shallow, deep):
        before = m(x)
        with torch.no_grad():
            m.prompt.add_(torch.randn_like(m.prompt))  # (a constant shift: LayerNorm ignores it)
        assert m(x).shape == (4, 10) and not torch.allclose(before, m(x))
    assert prompt_names(build_model({"name": "vit_tiny"}, (64,), 10)) == []
    with pytest.raises(ValueError, match="deep_prompt needs prompt_tokens"):
        build_model({"name": "vit_tiny", "deep_prompt": True}, (64,), 10)


def test_vit_traces_with_fx() -> None:
    torch.fx.symbolic_trace(build_model({"name": "vit_tiny", "prompt_tokens": 2, "deep_prompt": True}, (64,), 10))


def test_char_lm_is_causal() -> None:
    m = init_model({"name": "char_lm", "dim": 32}, (16,), 40, seed=0).eval()
    x = torch.randint(0, 40, (2, 16)).float()
    out = m(x)
    assert out.shape == (2, 16, 40)
    x2 = x.clone()
    x2[:, 10] = (x2[:, 10] + 1) % 40
    out2 = m(x2)
    assert torch.allclose(out[:, :10], out2[:, :10], atol=1e-6)  # the past does not see the future
    assert not torch.allclose(out[:, 10:], out2[:, 10:])
    assert m(x[:, :5]).shape == (2, 5, 40)  # shorter prompts than the context


def test_classification_loss_is_unchanged() -> None:
    out, y = torch.randn(7, 10), torch.randint(0, 10, (7,))
    assert torch.equal(task_loss(out, y), F.cross_entropy(out, y))


class _Fixed(nn.Module):
    """Returns given (B, T, V) logits whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_perplexity_on_a_hand_case() -> None:
    # two sequences of 2 target tokens over V = 4; one target is padding (IGNORE)
    p = torch.tensor([[[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]],
                      [[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]])
    y = torch.tensor([[0, 2], [3, IGNORE]])
    m = evaluate(_Fixed(p.log()), LocalData(torch.zeros(2, 2), y))
    nll = -(math.log(0.5) + math.log(0.25) + math.log(0.4)) / 3
    assert m["loss"] == pytest.approx(nll, rel=1e-6)
    assert m["perplexity"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert m["accuracy"] == pytest.approx(2 / 3)  # argmax right on tokens 1 and 3, not on 2
    uniform = evaluate(_Fixed(torch.zeros(2, 2, 4)), LocalData(torch.zeros(2, 2), torch.tensor([[0, 1], [2, 3]])))
    assert uniform["perplexity"] == pytest.approx(4.0)  # a uniform guess over V tokens: perplexity V


def test_char_lm_learns_pydoc_text() -> None:
    torch.set_num_threads(1)
    x, y, vocab = _pydoc_blocks(32, 160)
    train, test = LocalData(x[:128], y[:128]), LocalData(x[128:], y[128:])
    m = init_model({"name": "char_lm", "dim": 32, "depth": 1}, (32,), vocab, seed=0)
    before = evaluate(m, test)
    assert before["perplexity"] == pytest.approx(vocab, rel=0.3)  # untrained: near uniform
    cfg = TrainConfig(epochs=8, batch_size=16, optimizer="adam", lr=0.01)
    with keyed_torch(0):
        fit = sgd_train(m, train, cfg, rng(0, "lm"))
    after = evaluate(m, test)
    assert np.isfinite(fit["train_loss"])
    assert after["perplexity"] < 0.5 * before["perplexity"] and after["accuracy"] > before["accuracy"]
