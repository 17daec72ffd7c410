"""The Ray executor: the sampled clients run on Ray actors, on this machine or on a cluster.

``execution: {kind: ray}`` starts a local Ray (one actor per CPU, or ``workers``) when none is
running; ``address: auto`` joins the cluster this machine belongs to, ``address: ray://HOST:10001``
a remote one. Each actor builds every client's data once from the scenario and seed
(``fedkit.sim.workers``), so only tasks and the clients' small states travel; a task goes to
whichever actor is free, one at a time, so a killed actor (node lost, OOM) loses only the task it
was running: that client fails the round (an error reply) and a new actor takes its place.

On a local Ray the actors import fedkit from this checkout; a cluster gets this fedkit package
uploaded (``py_modules``) and needs its dependencies (torch, numpy, ...) installed on every node.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fedkit
from fedkit.runtime.client import ClientHost, ClientState
from fedkit.sim.workers import HostsFactory, Worker, job, longest_first, lost, next_ready, settle
from fedkit.types import ClientId, Reply, Task

INSTALL = "execution kind 'ray' needs Ray, an optional extra: pip install 'fedkit[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL) from None
    return ray


class _Actor:
    """One Ray actor: a :class:`Worker` (every client's data, built once)."""

    def __init__(self, factory: HostsFactory):
        self.worker = Worker(factory)

    def run(self, task: Task, state: ClientState) -> tuple[Reply, ClientState]:
        return self.worker.run(task, state)

    def pid(self) -> int:
        return os.getpid()


def _runtime_env(address: str | None) -> dict[str, Any]:
    pkg = Path(fedkit.__file__).resolve().parent
    if address is None:  # a local Ray: import this checkout (and the user's cwd modules)
        path = os.pathsep.join(p for p in (str(pkg.parent), os.getcwd(), os.environ.get("PYTHONPATH")) if p)
        return {"env_vars": {"PYTHONPATH": path}}
    return {"py_modules": [str(pkg)]}


class RayExecutor:
    """Executor over Ray actors; ``hosts`` keep each client's state in this process."""

    def __init__(
        self,
        hosts: Mapping[ClientId, ClientHost],
        factory: HostsFactory,
        workers: int | None = None,
        address: str | None = None,
    ):
        ray = import_ray()
        self._ray = ray
        self._hosts = hosts
        self._env = _runtime_env(address)
        self._owns = not ray.is_initialized()
        if self._owns:
            with warnings.catch_warnings():  # Ray's tip about accelerator env vars: not ours
                warnings.simplefilter("ignore", FutureWarning)
                if address is None:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._cls = ray.remote(num_cpus=1, max_restarts=0)(_Actor)
        self._factory = factory
        self._actors = [self._new() for _ in range(n)]
        try:  # wait until every actor has built its clients; a failure here is the user's
            ray.get([a.pid.remote() for a in self._actors])
        except Exception:
            self.close()
            raise

    def _new(self) -> Any:
        return self._cls.options(runtime_env=self._env).remote(self._factory)

    def pids(self) -> list[int]:
        return list(self._ray.get([a.pid.remote() for a in self._actors]))

    def run(self, batch: Sequence[Task]) -> list[Reply]:
        ray = self._ray
        replies: list[Reply | None] = [None] * len(batch)
        queue = longest_first(batch, self._hosts)
        idle = list(range(len(self._actors)))
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (task index, actor index)
        while queue or running:
            while idle and queue:
                pos = next_ready(queue, batch, {batch[i].client for i, _ in running.values()})
                if pos is None:
                    break
                i, a = queue.pop(pos), idle.pop()
                ref = self._actors[a].run.remote(*job(self._hosts[batch[i].client], batch[i]))
                running[ref] = (i, a)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, a = running.pop(ref)
                task = batch[i]
                try:
                    reply, state = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # raised inside fedkit on the worker
                    replies[i] = Reply(task.task_id, task.client, task.round, error=str(e)[:2000],
                                       version=task.version)
                except ray.exceptions.RayError as e:  # the actor (or its node) died
                    replies[i] = lost(task, f"ray actor died ({type(e).__name__})")
                    ray.kill(self._actors[a], no_restart=True)
                    self._actors[a] = self._new()
                else:
                    settle(self._hosts[task.client], state)
                    replies[i] = reply
                idle.append(a)
        out = [r for r in replies if r is not None]
        assert len(out) == len(batch)
        return out

    def close(self) -> None:
        ray = self._ray
        for a in getattr(self, "_actors", []):
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        self._actors = []
        if self._owns and ray.is_initialized():
            ray.shutdown()
