"""``fedkit pretrain SCENARIO``: pre-train a scenario's model centrally and save a checkpoint.

A pre-training scenario is an ordinary scenario whose data is the *source* split (for example
``digits`` with ``classes: [0, 1, 2, 3, 4]``, or a text corpus): its model is trained exactly as
the centralized baseline trains it (fedkit/centralized.py: the union of the clients' samples, the
scenario's ``train:`` settings, ``rounds x train.epochs`` passes, seeded), evaluated on the
source's test set, and saved as a checkpoint folder (fedkit/models/checkpoint.py), by default
``<output.dir>/<name>/model``. A fine-tuning scenario on the *target* split then starts from it::

    fedkit pretrain scenarios/pretrain_vit_digits.yaml      # -> runs/pretrain-vit-digits/model
    fedkit run scenarios/finetune_vit_digits.yaml           # model: {name: vit_tiny, checkpoint: ...}

Run with ``fedkit run``, the same file is federated pre-training; ``fedkit pretrain`` is the
central one, which is what pre-training usually is (a provider trains, clients fine-tune).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedkit import rng as frng
from fedkit.centralized import train_centrally
from fedkit.models import LocalData, evaluate, init_model, keyed_torch
from fedkit.models.checkpoint import CONFIG, save_checkpoint
from fedkit.scenario import Scenario

__all__ = ["default_path", "pretrain"]


def default_path(s: Scenario) -> Path:
    return Path(s.output.dir) / s.name / "model"


def pretrain(s: Scenario, out: str | Path | None = None, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train ``s``'s model centrally, save the checkpoint folder; (its path, test metrics before
    and after). An existing checkpoint is kept unless ``force`` (FileExistsError)."""
    path = Path(out) if out is not None else default_path(s)
    if (path / CONFIG).exists() and not force:
        raise FileExistsError(f"{path} already holds a checkpoint; pass --force to overwrite it")
    module, ds, after = train_centrally(s)
    test = LocalData(torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test).long())
    start = init_model(s.model, ds.input_shape, ds.num_classes, frng.seed_int(s.seed, "init"))
    with keyed_torch(frng.seed_int(s.seed, "torch-centralized")):
        before = evaluate(start, test)
    metrics = {"before": before, "after": after}
    info = {"scenario": s.name, "seed": s.seed, "dataset": s.data.dataset, "train": s.train.model_dump(mode="json"),
            "rounds": s.rounds, "test": metrics}
    save_checkpoint(module, s.model, ds.input_shape, ds.num_classes, path, info=json.loads(json.dumps(info)))
    return path, metrics
