"""What the pool and Ray executors share: a client's state travels with its task, its data does not.

Each worker builds every client's data once, from the scenario and seed (a picklable
:data:`HostsFactory`), and keeps none of their progress. The driver's :class:`ClientHost` holds
each client's state as before; its portable part (codec memory such as error-feedback residuals,
the model it holds for downlink deltas) goes to the worker with the task, the worker runs the
task on it over its own copy of the data with the client's own mods, and the new state comes back
with the reply. Hence:

- results are bit-identical to sequential execution (same state, data, kernels and draws; workers
  run torch with one thread, as the simulation does);
- any worker can run any client, so tasks go to whichever worker is free (no affinity), the
  clients with the most data first (longest-processing-time-first keeps the workers' loads even);
- a lost worker loses only the task it was running: that client's state stays as it was before
  the task, as when a device fails mid-round, and the task comes back as an error reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch

from fedkit.models import LocalData
from fedkit.runtime.client import ClientHost, ClientState
from fedkit.types import ClientId, Reply, Task

HostsFactory = Callable[[], Mapping[ClientId, ClientHost]]
"""Builds every client's host from the scenario and seed, identically in every process."""

_NO_DATA = LocalData(torch.empty(0), torch.empty(0, dtype=torch.int64))


def portable(state: ClientState) -> ClientState:
    """The client's state without its data: what crosses to a worker and back."""
    return dataclasses.replace(state, train=_NO_DATA, test=None)


def with_data(state: ClientState, like: ClientState) -> ClientState:
    """``state`` with the data of ``like`` (the local copy of the same client)."""
    return dataclasses.replace(state, train=like.train, test=like.test)


class Worker:
    """The worker side: every client's data, built once; runs tasks on shipped states."""

    def __init__(self, factory: HostsFactory):
        torch.set_num_threads(1)  # the kernels of the sequential run: bit-identical params
        self.hosts = dict(factory())

    def run(self, task: Task, state: ClientState) -> tuple[Reply, ClientState]:
        host = self.hosts[task.client]
        host.state = with_data(state, host.state)
        reply = host(task)
        return reply, portable(host.state)


def job(host: ClientHost, task: Task) -> tuple[Task, ClientState]:
    """What the driver sends a worker for ``task``."""
    return task, portable(host.state)


def settle(host: ClientHost, state: ClientState) -> None:
    """The driver keeps the state a worker returned."""
    host.state = with_data(state, host.state)


def lost(task: Task, why: str) -> Reply:
    """The reply of a task whose worker died: the client failed this task, nothing more."""
    return Reply(task.task_id, task.client, task.round, error=f"worker lost: {why}", version=task.version)


def next_ready(queue: list[int], batch: Sequence[Task], busy: set[ClientId]) -> int | None:
    """Index (into ``queue``) of the first queued task whose client has no task running (a
    client's tasks in one batch run in order: each starts from the state the previous left)."""
    for pos, i in enumerate(queue):
        if batch[i].client not in busy:
            return pos
    return None


def longest_first(batch: Sequence[Task], hosts: Mapping[ClientId, ClientHost]) -> list[int]:
    """Task indices, clients with the most training samples first (ties: task order)."""
    return sorted(range(len(batch)), key=lambda i: -hosts[batch[i].client].state.num_train)
