"""Client training of your own, by import path: ``train: {fn: "examples.custom_train:local_step"}``.

A training function gets the model (already holding the global parameters), the client's data
(``data.x``, ``data.y`` tensors), its typed training config (``config.lr``, ``config.epochs``,
``config.batch_size``, ...) and its random generator, keyed by (seed, round, client). It trains the
model in place and returns metrics; ``num_examples`` (optional) sets the client's weight. The same
function runs in-process, in ``--mode processes`` and on devices (each needs this module importable).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedkit.models import LocalData, TrainConfig
from fedkit.models.train import batches


def local_step(
    model: torch.nn.Module, data: LocalData, config: TrainConfig, rng: np.random.Generator
) -> dict[str, float]:
    """SGD with label smoothing and gradient-norm clipping."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    losses = []
    for idx in batches(len(data), config, rng):
        opt.zero_grad()
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx], label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(float(loss.detach()))
    return {"train_loss": float(np.mean(losses)), "steps": float(len(losses))}
