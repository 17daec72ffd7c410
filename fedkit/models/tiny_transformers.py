"""fedkit's own tiny transformers, small enough to pre-train on a CPU in seconds.

They exist so federated fine-tuning (LoRA, prompts, full fine-tuning) can be demonstrated on a
*genuinely pre-trained* model without downloading one: ``fedkit pretrain`` trains them centrally on
a source split and saves a checkpoint folder (fedkit/models/checkpoint.py) that a fine-tuning
scenario loads with ``model: {name: vit_tiny, checkpoint: DIR}``.

- ``vit_tiny``: a Vision Transformer (Dosovitskiy et al., ICLR 2021, arXiv:2010.11929) for the 8x8
  digits: non-overlapping ``patch`` x ``patch`` patches, a class token, learned positions,
  pre-norm blocks, the class token's final state through ``head``. Optional prompt tuning (VPT,
  Jia et al., ECCV 2022, arXiv:2203.12119): ``prompt_tokens`` learnable tokens after the class
  token, shallow (one set at the input) or ``deep_prompt`` (a fresh set at every block, the
  previous block's outputs at those positions dropped). :func:`prompt_names` lists them.
- ``char_lm``: a GPT-style causal character LM (Radford et al., 2018): token and position
  embeddings, causal pre-norm blocks, ``head`` onto the vocabulary. Its input is a (B, T) tensor of
  token ids (float, as every fedkit input; exact below 2**24), its output (B, T, V) logits; the
  training loop's next-token loss applies because the targets are (B, T) (fedkit/models/train.py).

Every projection is a plain ``nn.Linear`` with the names PEFT methods target, in the order a
block runs: ``blocks.<i>.attn.{query,key,value,out}`` and ``blocks.<i>.mlp.{fc1,fc2}``; the
classifier / LM head is ``head``. Forward passes have no data-dependent control flow, so
``torch.fx`` can trace them (split learning cuts at named modules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedkit.models.registry import MODELS

__all__ = ["CharLM", "TinyViT", "prompt_names"]


class Attention(nn.Module):
    """Multi-head self-attention with separate ``query``/``key``/``value``/``out`` Linears."""

    def __init__(self, dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.causal = heads, causal
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).flatten(-2))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, causal: bool = False) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.mlp = MLP(dim, max(1, round(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _check_sizes(dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
    if dim < 1 or depth < 1 or heads < 1 or mlp_ratio <= 0:
        raise ValueError(f"need dim, depth, heads >= 1 and mlp_ratio > 0 (got {dim}, {depth}, {heads}, {mlp_ratio})")


def _image_shape(input_shape: Sequence[int], what: str) -> tuple[int, int, int]:
    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side != input_shape[0]:
            raise ValueError(f"{what} needs (C, H, W) input or a square flat input, got {tuple(input_shape)}")
        return 1, side, side
    if len(input_shape) != 3:
        raise ValueError(f"{what} needs (C, H, W) input or a square flat input, got {tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


class TinyViT(nn.Module):
    """A tiny ViT for small images (8x8 digits: 16 patches of 2x2 by default); see the module
    docstring."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        patch: int = 2,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        prompt_tokens: int = 0,
        deep_prompt: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(dim, depth, heads, mlp_ratio)
        c, h, w = _image_shape(input_shape, "vit_tiny")
        if patch < 1 or h % patch or w % patch:
            raise ValueError(f"vit_tiny: patch={patch} must divide the image size {h}x{w}")
        if prompt_tokens < 0:
            raise ValueError(f"vit_tiny: prompt_tokens must be >= 0, got {prompt_tokens}")
        if deep_prompt and not prompt_tokens:
            raise ValueError("vit_tiny: deep_prompt needs prompt_tokens >= 1")
        self.num_prompts, self.deep = prompt_tokens, deep_prompt
        self.image = nn.Unflatten(1, (c, h, w)) if len(input_shape) == 1 else nn.Identity()
        self.patches = nn.Unfold(kernel_size=patch, stride=patch)  # (B, C*p*p, N)
        n = (h // patch) * (w // patch)
        self.embed = nn.Linear(c * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        if prompt_tokens:
            sets = depth if deep_prompt else 1
            self.prompt = nn.Parameter(torch.randn(sets, prompt_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def _prompted(self, x: torch.Tensor, i: int, replace: bool) -> torch.Tensor:
        """Insert block ``i``'s prompts after the class token (``replace``: over the last ones)."""
        p = self.prompt[i].expand(x.shape[0], -1, -1)
        rest = x[:, 1 + self.num_prompts :] if replace else x[:, 1:]
        return torch.cat([x[:, :1], p, rest], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.patches(self.image(x)).transpose(1, 2))
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos
        for i, block in enumerate(self.blocks):
            if self.num_prompts and (i == 0 or self.deep):
                x = self._prompted(x, i, replace=i > 0)
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class CharLM(nn.Module):
    """A causal character LM: input (T,) token ids, ``num_classes`` = the vocabulary size; see
    the module docstring."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        _check_sizes(dim, depth, heads, mlp_ratio)
        if len(input_shape) != 1 or input_shape[0] < 1:
            raise ValueError(f"char_lm needs (T,) token-id input, got {tuple(input_shape)}")
        if num_classes < 2:
            raise ValueError(f"char_lm needs a vocabulary of >= 2 tokens (num_classes), got {num_classes}")
        self.embed = nn.Embedding(num_classes, dim)
        self.pos = nn.Parameter(torch.randn(1, int(input_shape[0]), dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids, T <= the context it was built for -> (B, T, V) next-token logits."""
        h = self.embed(x.long()) + self.pos[:, : x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


MODELS.register("vit_tiny")(TinyViT)  # ~18 k parameters for 8x8 digits (16 patches of 2x2)
MODELS.register("char_lm")(CharLM)  # input (T,) token ids, num_classes = the vocabulary size


def prompt_names(module: nn.Module) -> list[str]:
    """The state-dict names of a model's prompt tokens (what prompt tuning trains with the head)."""
    return [name for name, _ in module.named_parameters() if name == "prompt" or name.endswith(".prompt")]
