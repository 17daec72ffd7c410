"""Shared by the executor tests: run a small scenario under an execution kind, and a training
function that kills the worker running one chosen client (or fails it, in the test process)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from fedkit.experiment import inprocess_link
from fedkit.models import LocalData, TrainConfig, sgd_train
from fedkit.runtime.server import RoundRecord, ServerState, run
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.scenario.execution import make_executor

DRIVER_PID = "FEDKIT_TEST_DRIVER_PID"
DIE_SIZE = "FEDKIT_TEST_DIE_SIZE"


def fail_for_size(module: nn.Module, data: LocalData, cfg: TrainConfig, rng: np.random.Generator) -> dict[str, float]:
    """sgd_train, except for the client with ``$FEDKIT_TEST_DIE_SIZE`` samples: in a worker
    process its task kills the worker; in the test process it raises (the same lost task)."""
    if str(len(data)) == os.environ.get(DIE_SIZE):
        if str(os.getpid()) != os.environ.get(DRIVER_PID):
            os._exit(3)
        raise RuntimeError("worker lost: simulated")
    return sgd_train(module, data, cfg, rng)


def run_kind(raw: dict[str, Any], execution: dict[str, Any] | None = None) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Final params and every per-client row of a run of ``raw`` under ``execution``."""
    torch.set_num_threads(1)  # as run_scenario does: the kernels every worker uses
    s = validate(raw | ({"execution": execution} if execution else {}))
    exp = build(s)
    link = inprocess_link(exp.clients, executor=lambda fleet: make_executor(s, fleet))
    rows: list[dict[str, Any]] = []

    def record(st: ServerState, rec: RoundRecord) -> None:
        rows.extend(rec.clients)

    try:
        return run(exp.plan, link, exp.initial_state(), record).params, rows
    finally:
        link.close()


def unique_size_client(raw: dict[str, Any]) -> tuple[str, int]:
    """A client whose number of training samples no other client has."""
    exp = build(validate(raw))
    sizes = {c: st.num_train for c, st in exp.clients.items()}
    for c, n in sizes.items():
        if list(sizes.values()).count(n) == 1:
            return c, n
    raise AssertionError("every client size repeats")
