"""Turn a validated scenario into the pieces every mode shares: data per client, the initial
model and the server's plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedkit import rng as frng
from fedkit.aggregation import client_config, make_aggregator
from fedkit.data import Dataset, load_dataset, partition
from fedkit.models import evaluate, get_params, init_model
from fedkit.runtime.client import ClientState
from fedkit.runtime.server import Plan, ServerState
from fedkit.scenario.schema import Scenario
from fedkit.types import ClientId, Params


@dataclass
class Experiment:
    scenario: Scenario
    dataset: Dataset
    parts: list[np.ndarray]
    clients: dict[ClientId, ClientState]
    plan: Plan
    init_params: Params

    def initial_state(self) -> ServerState:
        return ServerState(0, self.init_params, self.plan.aggregator.init(self.init_params))


def client_names(count: int) -> list[ClientId]:
    width = len(str(count - 1))
    return [f"client-{i:0{width}d}" for i in range(count)]


def load_data(s: Scenario) -> tuple[Dataset, list[np.ndarray]]:
    ds_params = {k: v for k, v in s.data.dataset.items() if k != "name"}
    ds = load_dataset(s.data.dataset["name"], s.seed, **ds_params)
    p_params = {k: v for k, v in s.data.partition.items() if k != "name"}
    parts = partition(
        s.data.partition["name"], ds.y_train, s.clients.count, s.seed, groups=ds.groups, **p_params
    )
    return ds, parts


def _client_data(ds: Dataset, parts: list[np.ndarray], seed: int, test_share: bool) -> dict[ClientId, ClientState]:
    """Each client's training samples; with federated evaluation also a seeded random slice of
    the held-out test set, so federated and centralized accuracy estimate the same quantity."""
    names = client_names(len(parts))
    test_parts: list[np.ndarray | None] = [None] * len(parts)
    if test_share:
        order = frng.rng(seed, "fed-test").permutation(len(ds.y_test))
        test_parts = list(np.array_split(order, len(parts)))
    out = {}
    for name, idx, tidx in zip(names, parts, test_parts, strict=True):
        out[name] = ClientState.from_arrays(
            name,
            ds.x_train[idx],
            ds.y_train[idx],
            None if tidx is None else ds.x_test[tidx],
            None if tidx is None else ds.y_test[tidx],
        )
    return out


def build(s: Scenario) -> Experiment:
    torch.set_num_threads(1)  # same kernels in every mode: bit-identical params across modes
    ds, parts = load_data(s)
    model_cfg = {"spec": dict(s.model), "input_shape": list(ds.input_shape), "num_classes": ds.num_classes}
    module = init_model(s.model, ds.input_shape, ds.num_classes, frng.seed_int(s.seed, "init"))
    init_params = get_params(module)
    strat = {k: v for k, v in s.strategy.items() if k != "name"}
    train_cfg: dict[str, Any] = s.train.model_dump() | client_config(s.strategy["name"], **strat)
    x_test = torch.from_numpy(ds.x_test).float()
    y_test = torch.from_numpy(ds.y_test).long()

    def central_eval(params: Params) -> dict[str, float]:
        loss, acc = evaluate(module, params, x_test, y_test)
        return {"loss": loss, "accuracy": acc}

    plan = Plan(
        seed=s.seed,
        rounds=s.rounds,
        aggregator=make_aggregator(s.strategy["name"], **strat),
        client_config={"model": model_cfg, "train": train_cfg, "uplink": s.compression.uplink},
        fraction=s.clients.per_round.fraction if s.clients.per_round.count is None else None,
        count=s.clients.per_round.count,
        min_clients=s.clients.per_round.min,
        downlink=s.compression.downlink,
        downlink_mode=s.compression.downlink_mode,
        evaluate=central_eval if s.evaluation.centralized else None,
        eval_every=s.evaluation.every,
        federated_eval=s.evaluation.federated,
        deadline_s=s.server.deadline_s,
        min_replies=s.server.min_replies,
        on_too_few=s.server.on_too_few,
        max_retries=s.server.max_retries,
    )
    clients = _client_data(ds, parts, s.seed, s.evaluation.federated)
    return Experiment(s, ds, parts, clients, plan, init_params)
