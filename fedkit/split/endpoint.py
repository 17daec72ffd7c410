"""The server end of split learning: the :class:`~fedkit.split.wire.SplitEndpoint` every
transport calls (in-process :class:`~fedkit.split.local.LocalConnect`, the gRPC ``Split`` stream).

The round engine drives it from one side, a transport from the other::

    engine     begin_round(state, r) -> expect(client, task) ... finish(task, keep) -> end_round()
    transport                 open(client, task) -> exchange(client, task, frame)* -> close(...)

Per frame the endpoint checks that the task is open and was sent to this client, that the step
comes in order (sfprompt: a step's activations may follow the previous step's activations, a
forward-only step of its EL2N scoring), decodes the tensors bounded by the cut's shape and the batch size
(:meth:`Endpoint.max_frame_bytes` bounds the whole frame), validates and steps the server part
(:class:`fedkit.split.server.LocalServer`, which trains the parts in place between values),
and encodes the reply with the gradients codec (memory per task and kind, one Generator per
task and kind keyed by (seed, "split", round, client, "down", kind), drawn in step order). A bad frame raises :class:`~fedkit.split.wire.SplitRefused` before any state changes;
other clients go on. Bytes are counted by category per round (:class:`ByteCount`), whatever
became of the task: they crossed the link.

What the server keeps:

* between rounds: one server part (params and optimizer state), which the engine checkpoints;
* within a round: splitfed_v1 keeps one copy per client, forked from the shared part at the
  client's first batch, averaged at :meth:`Endpoint.end_round`; the sequential schemes step
  the shared part. U-shape also holds the body's autograd graph between a step's two halves;
* per open task: its client, the next expected (step, kind), its gradients-codec memory, the
  loss and steps it added and, in sequential schemes, the server state as it was when the
  task's stream opened (its first batch).

A task's contribution stands only if the engine accepts its reply (``finish(task, keep=True)``).
A client that is lost, fails, gives up (``close`` with a reason), sends a refused update or
misses the deadline loses its contribution to this round and nothing else: splitfed_v1 drops
its copy and counts, a sequential scheme restores the state held before that client's first
batch. A sequential scheme therefore serves one client's stream at a time (a second stream is
refused until the first task settles), which the sequential round policy guarantees anyway.

Thread-safe: one lock around every call, so frames are handled one at a time (the server's
compute is serialised; splitfed_v1's results do not depend on the order of clients).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from fedkit.compression.limits import Limits
from fedkit.models.train import TrainConfig
from fedkit.split.channel import ByteCount, ServerHalf, bound
from fedkit.split.privacy import LeakMeter
from fedkit.split.schemes import SplitSetup
from fedkit.split.server import (
    LocalServer,
    ServerConfig,
    ServerState,
    server_begin_round,
    server_end_round,
)
from fedkit.split.wire import SplitFrame, SplitRefused
from fedkit.types import ClientId
from fedkit.untrusted import shorten

__all__ = ["Endpoint"]

_FRAME_SLACK = 8192  # frame envelopes and codec names on top of the decoded-size bounds
_PRECONDITION = "failed_precondition"


@dataclass
class _Open:
    """One split task the engine sent and has not settled yet."""

    client: ClientId
    half: ServerHalf
    streaming: bool = False
    ended: str | None = None  # the close reason once the stream ended ("" normally)
    discarded: bool = False
    next: tuple[int, str] = (0, "activations")
    before: ServerState | None = None  # sequential schemes: the state when the stream opened
    loss: float = 0.0
    steps: int = 0


class Endpoint:
    """The split server of one experiment over :func:`~fedkit.split.server.server_handle`.

    ``opt`` is the server part's optimizer, ``gradients`` the codec spec of every server ->
    client tensor, ``batch_size`` the clients' largest batch (it bounds every frame).
    ``leakage``: record every gradient sent down with its batch's labels and report the round's
    label-leak AUC (``leak_auc``, :class:`~fedkit.split.privacy.LeakMeter`; binary tasks).
    """

    def __init__(
        self,
        setup: SplitSetup,
        opt: TrainConfig,
        *,
        gradients: str = "identity",
        seed: int = 0,
        batch_size: int = 32,
        leakage: bool = False,
    ) -> None:
        self.setup = setup
        self.scheme = setup.scheme
        self.cfg = ServerConfig(setup.scheme.name, setup.server_module, opt, seed, setup.activation_shape)
        self.gradients, self.seed, self.batch_size = gradients, seed, batch_size
        n = batch_size
        self._limits: dict[str, Limits] = {"activations": bound((n, *setup.activation_shape))}
        if setup.body_shape is not None:  # ushape: the gradient w.r.t. the body output comes up
            self._limits["gradients"] = bound((n, *setup.body_shape))
        self._labels = bound((n,), np.int64) if self.scheme.labels_up else None
        self._lock = threading.Lock()
        self._box: LocalServer | None = None  # the round's server side (None between rounds)
        self._round = 0
        self._tasks: dict[str, _Open] = {}
        self._bytes = ByteCount()
        if leakage and not (self.scheme.labels_up and self.scheme.gradients_down):
            raise ValueError(f"label leakage is measured on gradients sent down for labels sent up; {self.scheme.name} has none")
        self.leakage = leakage
        self._leak = LeakMeter()

    # ---------------------------------------------------------------------------- the engine

    def begin_round(self, state: ServerState, round: int) -> None:
        """Start round ``round`` from the server state the engine holds."""
        with self._lock:
            self._box = LocalServer(self.cfg, server_begin_round(state, round))
            self._round, self._tasks, self._bytes, self._leak = round, {}, ByteCount(), LeakMeter()

    def expect(self, client: ClientId, task_id: str) -> None:
        """The engine sent split task ``task_id`` to ``client``: its stream may open."""
        with self._lock:
            self._need_round()
            if task_id in self._tasks:
                raise ValueError(f"split task {task_id!r} is already open")
            self._tasks[task_id] = _Open(client, ServerHalf(self.gradients, client, seed=self.seed, round=self._round))

    def finish(self, task_id: str, keep: bool) -> None:
        """The engine settled the task: keep its contribution (its reply was accepted) or undo it."""
        with self._lock:
            t = self._tasks.pop(task_id, None)
            if t is None:
                return
            if not keep:
                self._discard(t)
            self._bytes = self._bytes + t.half.bytes

    def end_round(self) -> tuple[ServerState, dict[str, float]]:
        """Close the round: undo tasks never settled, average V1 copies; the new state and the
        round's metrics (server loss, steps, samples and ``bytes_*`` by category)."""
        with self._lock:
            self._need_round()
            for t in self._tasks.values():
                self._discard(t)
                self._bytes = self._bytes + t.half.bytes
            state, metrics = server_end_round(self.cfg, self._need_round().state)
            metrics |= self._bytes.as_metrics()
            auc = self._leak.auc() if self.leakage else None
            if auc is not None:
                metrics["leak_auc"] = auc
            self._box, self._tasks, self._bytes = None, {}, ByteCount()
            return state, metrics

    # ------------------------------------------------------------------------- the transport

    def open(self, client: ClientId, task_id: str) -> None:
        with self._lock:
            t = self._task(client, task_id)
            if t.streaming:
                raise SplitRefused(f"split task {shorten(task_id)} already has its stream", _PRECONDITION)
            if not self.scheme.parallel:
                busy = [k for k, o in self._tasks.items() if o.streaming and k != task_id]
                if busy:
                    raise SplitRefused(
                        f"{self.scheme.name} serves one client at a time; task {shorten(busy[0])} is in progress",
                        _PRECONDITION,
                    )
                t.before = self._need_round().state  # a copy: the live part goes on in place
            t.streaming = True

    def exchange(self, client: ClientId, task_id: str, frame: SplitFrame) -> SplitFrame | None:
        with self._lock:
            t = self._task(client, task_id)
            if not t.streaming or t.ended is not None:
                what = "is not open" if not t.streaming else "has ended"
                raise SplitRefused(f"the stream of split task {shorten(task_id)} {what}", _PRECONDITION)
            limits = self._limits.get(frame.kind)
            if limits is None:
                raise SplitRefused(f"scheme {self.scheme.name} does not accept {shorten(frame.kind)} from the client")
            if (frame.step, frame.kind) != t.next and not self._forward_only(t, frame):
                raise SplitRefused(
                    f"step out of order: expected {t.next[1]} of step {t.next[0]}, "
                    f"got {shorten(frame.kind)} of step {shorten(frame.step)}"
                )
            box = self._need_round()
            loss, steps = box.value.loss, box.value.steps
            try:
                msg = t.half.decode(frame, limits, self._labels)
                reply = box.handle(client, msg)
            except ValueError as e:  # DecodeError included: the state is untouched
                raise SplitRefused(str(e)) from None
            t.loss += box.value.loss - loss
            t.steps += box.value.steps - steps
            if self.leakage and reply is not None and msg.labels is not None:
                self._leak.add(reply.tensors[0], msg.labels)
            ushape_first = self.scheme.cuts == 2 and frame.kind == "activations"
            t.next = (frame.step, "gradients") if ushape_first else (frame.step + 1, "activations")
            return None if reply is None else t.half.encode(reply)

    def close(self, client: ClientId, task_id: str, reason: str = "") -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None or t.client != client or t.ended is not None:
                return  # settled already (a late close), or not this client's: nothing to undo
            t.ended = reason
            if reason:  # the client gave up: its contribution goes now, not at the deadline
                self._discard(t)

    def max_frame_bytes(self) -> int:
        labels = 0 if self._labels is None else self._labels.max_bytes
        return max(lim.max_bytes for lim in self._limits.values()) + labels + _FRAME_SLACK

    # ------------------------------------------------------------------------------ helpers

    def _forward_only(self, t: _Open, frame: SplitFrame) -> bool:
        """sfprompt: the next step's activations may come instead of this step's gradients (the
        client scored a batch through the body and needs no backward; the graph is dropped)."""
        return (self.scheme.forward_only and t.next[1] == "gradients"
                and (frame.step, frame.kind) == (t.next[0] + 1, "activations"))

    @property
    def _state(self) -> ServerState | None:
        """The server state as a value now (None between rounds); the same object until a
        frame steps it or a discard restores an earlier one."""
        return None if self._box is None else self._box.state

    def _need_round(self) -> LocalServer:
        if self._box is None:
            raise RuntimeError("the split endpoint is between rounds (begin_round first)")
        return self._box

    def _task(self, client: ClientId, task_id: str) -> _Open:
        t = self._tasks.get(task_id)
        if t is None:
            raise SplitRefused(f"no open split task {shorten(task_id)}", _PRECONDITION)
        if t.client != client:
            raise SplitRefused(f"split task {shorten(task_id)} was not sent to {shorten(client)}", _PRECONDITION)
        return t

    def _discard(self, t: _Open) -> None:
        """Undo what ``t`` added to the server state (idempotent)."""
        if t.discarded or not t.streaming or self._box is None:
            t.discarded = True
            return
        t.discarded = True
        if self.scheme.parallel:
            self._box.drop(t.client, t.loss, t.steps)
        elif t.before is not None:
            self._box.state = t.before
