"""Local training and evaluation on in-memory tensors: a plain torch loop, no DataLoader.

FedProx (Li et al., MLSys 2020) adds (mu/2)||w - w_global||^2 to the local loss; with mu == 0
the term is skipped entirely, so FedProx(mu=0) is bit-identical to FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkit.models.params import get_params, set_params
from fedkit.types import Params


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    mu: float = 0.0

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> TrainConfig:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in m.items() if k in fields})


def _optimizer(cfg: TrainConfig, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: sgd, adam")


def _batches(n: int, cfg: TrainConfig, rng: np.random.Generator) -> list[torch.Tensor]:
    """Index batches for one task: whole shuffled epochs, or exactly ``steps`` batches."""
    bs = max(1, min(cfg.batch_size, n))
    out: list[torch.Tensor] = []
    epoch = 0
    while (epoch < cfg.epochs) if cfg.steps is None else (len(out) < cfg.steps):
        perm = torch.from_numpy(rng.permutation(n))
        out.extend(perm[i : i + bs] for i in range(0, n, bs))
        epoch += 1
    return out if cfg.steps is None else out[: cfg.steps]


def train(
    module: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> tuple[Params, float, int]:
    """Train from ``params`` on (x, y); returns (new params, mean batch loss, steps taken)."""
    set_params(module, params)
    module.train()
    weights = list(module.parameters())
    opt = _optimizer(cfg, weights)
    anchor = [w.detach().clone() for w in weights] if cfg.mu > 0 else None
    total, steps = 0.0, 0
    for idx in _batches(len(y), cfg, rng):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(x[idx]), y[idx])
        if anchor is not None:
            prox = sum(((w - a) ** 2).sum() for w, a in zip(weights, anchor, strict=True))
            loss = loss + 0.5 * cfg.mu * prox
        loss.backward()
        opt.step()
        total += float(loss.detach())
        steps += 1
    if not np.isfinite(total):
        raise FloatingPointError("local training diverged (loss is NaN or Inf); lower the lr")
    return get_params(module), total / max(steps, 1), steps


@torch.no_grad()
def evaluate(
    module: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``params`` on (x, y)."""
    set_params(module, params)
    module.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        out = module(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    n = max(len(y), 1)
    return loss / n, correct / n
