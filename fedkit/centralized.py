"""The centralized baseline of a scenario: its model trained on the union of the clients' data.

Federated and split runs are judged against it (README, ``tests/e2e/test_split_accuracy.py``):
the same model, the same initialisation (``seed_int(seed, "init")``, as the round engine), the
same ``train:`` settings (optimizer, lr, batch size) and the same number of passes over each
sample: ``rounds x train.epochs`` epochs over the union (with ``train.steps``: rounds x steps x
the clients sampled per round, so the step budget matches). Evaluated on the same held-out test
set as the scenario's centralized evaluation. A ``split:`` section is ignored (the unsplit model
is the reference), as are strategy, compression and the lr schedule (there are no rounds).

    python -m fedkit.centralized scenarios/split_fedavg.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch

from fedkit import rng as frng
from fedkit.data import Dataset
from fedkit.models import init_model
from fedkit.models.train import LocalData, TrainConfig, evaluate, keyed_torch, sgd_train
from fedkit.scenario import Scenario, load
from fedkit.scenario.build import load_data
from fedkit.scenario.peft import model_spec

__all__ = ["centralized", "main", "train_centrally"]


def _budget(s: Scenario) -> TrainConfig:
    """The scenario's client training settings with the whole run's budget of passes."""
    train = TrainConfig(**s.train.model_dump(exclude={"schedule", "fn"}))
    if train.steps is None:
        return train.model_copy(update={"epochs": s.rounds * train.epochs})
    per = s.clients.per_round
    sampled = per.count if per.count is not None else max(per.min, math.ceil((per.fraction or 1.0) * s.clients.count))
    return train.model_copy(update={"steps": s.rounds * train.steps * min(sampled, s.clients.count)})


def centralized(s: Scenario) -> dict[str, float]:
    """Train the scenario's (unsplit) model on every client's samples at once; test metrics.

    Returns ``accuracy`` and ``loss`` on the test set, plus ``epochs``/``steps`` trained and
    ``samples`` (the union's size). Batches are drawn from ``rng(seed, "centralized")`` and
    torch's draws are keyed, so the result reproduces at a given torch thread count.
    """
    return train_centrally(s)[2]


def train_centrally(s: Scenario) -> tuple[torch.nn.Module, Dataset, dict[str, float]]:
    """:func:`centralized`, also returning the trained module and the dataset (``fedkit
    pretrain`` saves the module; a causal LM's metrics add ``perplexity``)."""
    if s.train.fn is not None:
        raise ValueError("centralized: train.fn is not supported (the baseline runs the built-in sgd loop)")
    ds, parts = load_data(s)
    idx = np.concatenate(parts)
    data = LocalData(torch.from_numpy(ds.x_train[idx]).float(), torch.from_numpy(ds.y_train[idx]).long())
    test = LocalData(torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test).long())
    spec = model_spec(s, ds.input_shape, ds.num_classes)  # fine-tuning: the same adapters
    module = init_model(spec, ds.input_shape, ds.num_classes, frng.seed_int(s.seed, "init"))
    cfg = _budget(s)
    with keyed_torch(frng.seed_int(s.seed, "torch-centralized")):
        fit = sgd_train(module, data, cfg, frng.rng(s.seed, "centralized"))
        out = evaluate(module, test, device=cfg.device)
    extra = {k: v for k, v in out.items() if k not in ("accuracy", "loss")}
    metrics = {"accuracy": out["accuracy"], "loss": out["loss"], **extra, "train_loss": fit["train_loss"],
               "epochs": float(cfg.epochs if cfg.steps is None else 0), "steps": fit["steps"], "samples": float(len(data))}
    return module, ds, metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedkit.centralized", description=__doc__.splitlines()[0])
    p.add_argument("scenario")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as fedkit run)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(centralized(load(args.scenario)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
