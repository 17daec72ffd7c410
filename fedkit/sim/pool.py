"""The pool executor: the sampled clients run in N worker processes on this machine.

Workers are spawned once per run; each builds every client's data from the scenario and seed
(``fedkit.sim.workers``), so per task only the task and the client's small state cross the
pipe. A task goes to whichever worker is free. A worker that dies loses the one task it was
running (an error reply for that client) and is replaced by a fresh one before its next task.
Use it when local training dominates and the machine has cores to spare; for tiny models,
``stacked`` is faster still.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import fedkit
from fedkit.runtime.client import ClientHost
from fedkit.sim.workers import HostsFactory, Worker, job, longest_first, lost, next_ready, settle
from fedkit.types import ClientId, Reply, Task


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _serve(fd: int) -> None:
    """A worker process: build the clients once, then answer (task, state) messages."""
    conn = Connection(fd)
    try:
        worker = Worker(conn.recv())
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            conn.send(("ok", worker.run(*msg)))
        except Exception as e:  # run_task turns client failures into replies; this is the rest
            conn.send(("error", f"{type(e).__name__}: {e}"))


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes]
    conn: Connection


class Pool:
    """Executor over ``workers`` spawned processes; ``hosts`` keep each client's state here."""

    def __init__(self, hosts: Mapping[ClientId, ClientHost], factory: HostsFactory, workers: int):
        if workers < 1:
            raise ValueError(f"pool needs workers >= 1, got {workers}")
        self._hosts = hosts
        self._factory = factory
        self._slots: list[_Slot] = []
        pending: list[_Slot] = []
        try:
            for _ in range(workers):
                pending.append(self._spawn())
            for slot in pending:
                self._slots.append(self._ready(slot))
        except BaseException:
            for slot in pending:
                slot.proc.kill()
                slot.proc.wait()
            raise

    def _spawn(self) -> _Slot:
        """A fresh interpreter (not multiprocessing: it would re-run the caller's script), talking
        over a socket pair; it imports this fedkit and the caller's working directory."""
        ours, theirs = socket.socketpair()
        root = str(Path(fedkit.__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        code = f"from fedkit.sim.pool import _serve; _serve({theirs.fileno()})"
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        conn = Connection(ours.detach())
        conn.send(self._factory)
        return _Slot(proc, conn)

    def _ready(self, slot: _Slot) -> _Slot:
        try:
            kind, value = slot.conn.recv()
        except EOFError:
            code = slot.proc.wait(5)
            raise RuntimeError(f"pool worker exited while starting (exit code {code})") from None
        if kind != "ready":
            raise RuntimeError(f"pool worker could not build the clients: {value}")
        return slot

    def _alive(self, slot: _Slot) -> _Slot:
        if slot.proc.poll() is None:
            return slot
        slot.conn.close()
        return self._ready(self._spawn())

    def run(self, batch: Sequence[Task]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(batch)
        queue = longest_first(batch, self._hosts)
        self._slots = [self._alive(s) for s in self._slots]
        idle = list(self._slots)
        running: dict[Connection, tuple[int, _Slot]] = {}
        while queue or running:
            if queue and not idle and not running:  # every worker died in this batch
                idle.append(self._replace(self._slots[0]))
            while idle and queue:
                pos = next_ready(queue, batch, {batch[i].client for i, _ in running.values()})
                if pos is None:
                    break
                i = queue.pop(pos)
                slot = idle.pop()
                try:
                    slot.conn.send(job(self._hosts[batch[i].client], batch[i]))
                except OSError:  # it died while idle: retire it, the task waits for another
                    queue.insert(pos, i)
                    continue
                running[slot.conn] = (i, slot)
            for conn in wait(list(running)):
                assert isinstance(conn, Connection)
                i, slot = running.pop(conn)
                task = batch[i]
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):  # the task dies with it; replaced at the next batch
                    code = slot.proc.wait(5)
                    replies[i] = lost(task, f"pool worker {slot.proc.pid} exited (code {code})")
                    continue
                if kind == "ok":
                    reply, state = value
                    settle(self._hosts[task.client], state)
                    replies[i] = reply
                else:
                    replies[i] = Reply(task.task_id, task.client, task.round, error=str(value), version=task.version)
                idle.append(slot)
        out = [r for r in replies if r is not None]
        assert len(out) == len(batch)
        return out

    def _replace(self, slot: _Slot) -> _Slot:
        slot.proc.kill()
        slot.proc.wait()
        new = self._alive(slot)
        self._slots[self._slots.index(slot)] = new
        return new

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots]

    def close(self) -> None:
        for s in self._slots:
            with contextlib.suppress(OSError):
                s.conn.send(None)
        for s in self._slots:
            try:
                s.proc.wait(10)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(5)
            s.conn.close()
        self._slots = []
