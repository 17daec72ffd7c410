"""The client role: turn a task into a reply. Identical in-process, in a client process and on
a device; only the Link that delivers the task differs.

The task's config says everything the client needs (model spec, training settings, codec,
seed); the client holds only its data and its private codec memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedkit import rng as frng
from fedkit.compression import make
from fedkit.models import TrainConfig, build_model, evaluate, train
from fedkit.runtime.downlink import receive
from fedkit.runtime.link import ClientFn
from fedkit.types import ClientId, Params, Reply, Task


@dataclass
class ClientState:
    """One client's private data and codec memory (error-feedback residuals live here)."""

    id: ClientId
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    codec_state: dict[str, Any] = field(default_factory=dict)
    held: tuple[int, Params] | None = None  # (round, model) kept for downlink deltas

    @classmethod
    def from_arrays(
        cls,
        client_id: ClientId,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
    ) -> ClientState:
        def t(a: np.ndarray | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

        xtr, ytr = t(x_train, torch.float32), t(y_train, torch.int64)
        assert xtr is not None and ytr is not None
        return cls(client_id, xtr, ytr, t(x_test, torch.float32), t(y_test, torch.int64))

    @property
    def num_train(self) -> int:
        return len(self.y_train)


def save_client_data(path: str | Path, state: ClientState) -> None:
    arrays = {"x_train": state.x_train.numpy(), "y_train": state.y_train.numpy()}
    if state.x_test is not None and state.y_test is not None:
        arrays |= {"x_test": state.x_test.numpy(), "y_test": state.y_test.numpy()}
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_client_data(path: str | Path, client_id: ClientId) -> ClientState:
    """A device's own data: an ``.npz`` with x_train, y_train and optionally x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read client data: {e}") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (has: {', '.join(arrays) or 'none'})")
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        if x in arrays and len(arrays[x]) != len(arrays.get(y, [])):
            raise ValueError(f"{path}: {x} and {y} have different lengths")
        if x in arrays and not np.isfinite(arrays[x]).all():
            raise ValueError(f"{path}: {x} contains NaN or Inf")
    return ClientState.from_arrays(
        client_id, arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test")
    )


class ModelCache:
    """One module per model spec per process: clients share it instead of rebuilding it."""

    def __init__(self) -> None:
        self._models: dict[str, nn.Module] = {}

    def get(self, model: Mapping[str, Any]) -> nn.Module:
        key = json.dumps(model, sort_keys=True)
        if key not in self._models:
            self._models[key] = build_model(model["spec"], model["input_shape"], model["num_classes"])
        return self._models[key]


def handle(task: Task, client: ClientState, models: ModelCache) -> Reply:
    """Run one task. Failures become a reply with ``error`` set, never an exception."""
    try:
        return _handle(task, client, models)
    except Exception as e:  # a client's failure is data for the server, not a crash
        return Reply(task.task_id, client.id, task.round, error=f"{type(e).__name__}: {e}")


def _handle(task: Task, client: ClientState, models: ModelCache) -> Reply:
    cfg = task.config
    t0 = time.perf_counter()
    params, client.held = receive(cfg.get("downlink", {}), task.params, client.held)
    module = models.get(cfg["model"])
    if task.kind == "evaluate":
        if client.x_test is None or client.y_test is None or len(client.y_test) == 0:
            return Reply(task.task_id, client.id, task.round, 0, metrics={})
        loss, acc = evaluate(module, params, client.x_test, client.y_test)
        n = len(client.y_test)
        return Reply(task.task_id, client.id, task.round, n, metrics={"loss": loss, "accuracy": acc})
    seed = int(cfg["seed"])
    gen = frng.rng(seed, "train", task.round, client.id)
    new, loss, steps = train(
        module, params, client.x_train, client.y_train, TrainConfig.from_mapping(cfg["train"]), gen
    )
    delta = [n - p for n, p in zip(new, params, strict=True)]
    codec = make(cfg.get("uplink", "identity"))
    state = client.codec_state.get(codec.spec)
    if state is None:
        state = codec.init(delta)
    t1 = time.perf_counter()
    state, enc = codec.encode(state, delta, frng.rng(seed, "uplink", task.round, client.id))
    client.codec_state[codec.spec] = state
    t2 = time.perf_counter()
    metrics = {"train_loss": loss, "steps": float(steps), "compute_s": t1 - t0, "encode_s": t2 - t1}
    return Reply(task.task_id, client.id, task.round, client.num_train, update=enc, metrics=metrics)


def make_client_fn(client: ClientState, models: ModelCache | None = None) -> ClientFn:
    cache = models or ModelCache()
    return lambda task: handle(task, client, cache)
