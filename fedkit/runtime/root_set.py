"""FLTrust's root set in the engine (Cao, Fang, Liu, Gong, NDSS 2021).

FLTrust scores each client update against the server's own update ``g0``, trained each round
from the current global model on a small clean *root set* the server holds. :class:`RootSet`
wraps the ``fltrust`` aggregator: every step it trains ``g0`` from the params it is given (the
round's global model) and hands it to the reducer among the updates as client
:data:`~fedkit.aggregation.ROOT_CLIENT`. Which samples form the root set is the scenario
builder's choice (fedkit/scenario/build.py: a seeded draw from the training split, never the
test split the accuracy is measured on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit import rng as frng
from fedkit.aggregation import ROOT_CLIENT
from fedkit.models import LocalData, build_model, get_params, keyed_torch, set_params
from fedkit.models.train import TrainConfig, sgd_train
from fedkit.runtime.task import ModelRef
from fedkit.types import Params, Update

RootTrainer = Callable[[Params, int], Params]
"""``train(global_params, k) -> delta`` on the root set, for the ``k``-th aggregation."""

_STEPS = "root.steps"


def root_trainer(model: ModelRef, data: LocalData, cfg: TrainConfig, seed: int) -> RootTrainer:
    """Local training on the root set with the clients' settings, keyed by ``(seed, k)``."""
    module = build_model(model.spec, model.input_shape, model.num_classes)

    def train(params: Params, k: int) -> Params:
        set_params(module, params)
        with keyed_torch(frng.seed_int(seed, "torch-root", k)):
            sgd_train(module, data, cfg, frng.rng(seed, "root-train", k))
        return [n - p for n, p in zip(get_params(module), params, strict=True)]

    return train


@dataclass(frozen=True, eq=False)
class RootSet:
    """``inner`` (an FLTrust aggregator) with the server's root update added every step."""

    inner: Any
    train: RootTrainer
    size: int  # samples in the root set (the root update's ``num_examples``)

    def init(self, params: Params) -> dict[str, Any]:
        return {**self.inner.init(params), _STEPS: [np.array(0.0)]}

    def step(self, state: dict[str, Any], params: Params, updates: Sequence[Update]) -> tuple[dict[str, Any], Params]:
        k = int(np.asarray(state[_STEPS][0])) + 1
        inner = {key: v for key, v in state.items() if key != _STEPS}
        root = Update(ROOT_CLIENT, self.train(params, k), self.size)
        inner, params = self.inner.step(inner, params, [*updates, root])
        return {**inner, _STEPS: [np.array(float(k))]}, params
