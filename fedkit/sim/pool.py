"""The pool executor: the sampled clients run in N worker processes on this machine.

Workers start once per run. Where the platform has ``fork`` (Linux), a worker is a fork of the
driver: it starts in milliseconds with torch and fedkit imported and every client's data already
built (shared copy-on-write), where a fresh interpreter would spend seconds importing torch and
scikit-learn and rebuilding the data. Elsewhere (``start="spawn"``) each worker is a fresh
interpreter that builds every client's data from the scenario and seed (``fedkit.sim.workers``).
Either way, per task only the task and the client's small state cross the pipe. A task goes to
whichever worker is free. A worker that dies loses the one task it was running (an error reply
for that client) and is replaced by a fresh one before its next task. Use it when local training
dominates and the machine has cores to spare; for tiny models, ``stacked`` is faster still.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Literal, Protocol

import fedkit
from fedkit.models.train import warm_up
from fedkit.runtime.client import ClientHost, hosts
from fedkit.sim.workers import HostsFactory, Worker, job, longest_first, lost, next_ready, settle
from fedkit.types import ClientId, Reply, Task


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


Start = Literal["fork", "spawn"]
"""How workers start: ``fork`` (a copy of the driver) or ``spawn`` (a fresh interpreter)."""


def default_start() -> Start:
    """``fork`` on Linux (cheap and safe for the driver's state at that point: torch runs one
    thread, no gRPC); ``spawn`` elsewhere (macOS's system libraries are not fork-safe)."""
    return "fork" if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _serve(fd: int) -> None:
    """A spawned worker process: the factory comes first on the pipe."""
    conn = Connection(fd)
    try:
        factory = conn.recv()
    except BaseException as e:  # e.g. the factory's module does not import here
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"))
        return
    _answer(conn, factory)


def _serve_forked(conn: Connection, ends: list[Connection], factory: HostsFactory) -> None:
    """A forked worker: first drop its copies of the driver's pipe ends (its own and the other
    workers'; a copy kept here would hide the driver's exit from them), then serve."""
    for c in ends:
        c.close()
    _answer(conn, factory)


def _answer(conn: Connection, factory: HostsFactory) -> None:
    """Build the clients once, then answer (task, state) messages until told to stop."""
    try:
        worker = Worker(factory)
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


class _Proc(Protocol):
    """What the pool needs of a worker process (``subprocess.Popen`` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class _Forked:
    """A forked ``multiprocessing.Process`` seen as a :class:`_Proc`."""

    def __init__(self, proc: multiprocessing.process.BaseProcess):
        self._proc = proc
        self.pid = proc.pid or 0

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(f"pool worker {self.pid}", timeout or 0.0)
        return self._proc.exitcode

    def kill(self) -> None:
        self._proc.kill()


@dataclass
class _Slot:
    proc: _Proc
    conn: Connection


class Pool:
    """Executor over ``workers`` processes; ``hosts`` keep each client's state here.

    ``factory`` builds the clients in a spawned worker; a forked one takes the driver's
    clients (``hosts``' states) as they are, the same data without building it again."""

    def __init__(self, hosts: Mapping[ClientId, ClientHost], factory: HostsFactory, workers: int,
                 start: Start | None = None):
        if workers < 1:
            raise ValueError(f"pool needs workers >= 1, got {workers}")
        start = default_start() if start is None else start
        if start not in ("fork", "spawn"):
            raise ValueError(f"pool start must be 'fork' or 'spawn', got {start!r}")
        self._hosts = hosts
        self._factory = factory
        self._start = start
        self._slots: list[_Slot] = []
        self._starting: list[_Slot] = []  # started, not yet ready
        self._ends: list[Connection] = []  # the driver's end of every worker's pipe
        if start == "fork":
            warm_up()  # imported once here, not in every worker's first task
        try:
            for _ in range(workers):
                self._starting.append(self._launch())
            self._slots = [self._ready(slot) for slot in self._starting]
        except BaseException:
            for slot in self._starting:
                slot.proc.kill()
                slot.proc.wait()
            raise
        finally:
            self._starting = []

    def _launch(self) -> _Slot:
        return self._fork() if self._start == "fork" else self._spawn()

    def _fork(self) -> _Slot:
        """A copy of the driver, talking over a socket pair; it serves the driver's clients as
        they are now (their state comes with each task; the data is what it shares)."""
        ours, theirs = socket.socketpair()
        mine, child = Connection(ours.detach()), Connection(theirs.detach())
        states = {c: h.state for c, h in self._hosts.items()}
        self._ends = [c for c in self._ends if not c.closed] + [mine]
        proc = multiprocessing.get_context("fork").Process(
            target=_serve_forked, args=(child, list(self._ends), lambda: hosts(states)),
            name="fedkit-pool-worker", daemon=True)
        try:
            proc.start()
        finally:
            child.close()
        return _Slot(_Forked(proc), mine)

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
        return self._ready(self._launch())

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
