"""The server side of split learning: part states as values, one message in, one reply out.

Schemes and their message sequences are documented in :mod:`fedkit.split.schemes` and
:mod:`fedkit.split.channel`. Here:

* :class:`PartState` is one server part (or U-shape body) at rest: ``params`` in state_dict
  order plus its optimizer state. SplitFed V1 keeps one copy per client for the round
  (``copies``, forked from ``shared`` at the client's first batch); every other scheme updates
  ``shared``.
* :class:`LocalServer` ``.handle(client, msg) -> reply | None`` validates the frame (one float
  tensor, finite, per-sample shape as expected, labels match the batch) and raises
  ``ValueError`` naming what is wrong *before* touching anything, so a transport can answer
  INVALID_ARGUMENT and go on with other clients. It trains the parts live (tensors updated in
  place across steps, :class:`~fedkit.split.optim.LivePart`) and hands out the
  :class:`ServerState` value on :attr:`LocalServer.state`; :func:`server_handle` is the same
  step as a pure function of values.
* :func:`server_end_round` averages the V1 copies into ``shared``, **sample-weighted** (each
  copy by the samples its client sent this round; Thapa et al.'s code uses an unweighted mean,
  which is the same for equal client sizes). Optimizer buffers are averaged with the same
  weights; the step count is the largest.

What the server keeps, and how to drop a client: a :class:`ServerState` is an immutable value
(a read of :attr:`LocalServer.state` copies the live parts out), so a transport that loses a
client mid-stream restores the value it held before that client's first batch (sequential
schemes: assign it to :attr:`LocalServer.state`) or discards that client's V1 copy and sample
count (:meth:`LocalServer.drop`). The only non-value is ``pending`` (U-shape: the body's
autograd graph between sending its output down and receiving that output's gradient); it is
transient, never checkpointed, and a new activations message from the same client replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkit.aggregation.reduce import weighted_mean
from fedkit.models.params import get_params
from fedkit.models.train import TrainConfig
from fedkit.split.channel import SplitBatch
from fedkit.split.optim import LivePart, OptState, opt_init, trainable
from fedkit.types import ClientId, Params, Update

__all__ = [
    "LocalServer",
    "PartState",
    "ServerConfig",
    "ServerState",
    "average_parts",
    "server_begin_round",
    "server_end_round",
    "server_handle",
    "server_init",
    "state_from_arrays",
    "state_to_arrays",
]


@dataclass(frozen=True, eq=False)
class ServerConfig:
    """What the server side needs to know; ``module`` is an architecture, never written into."""

    scheme: str
    module: nn.Module
    opt: TrainConfig = TrainConfig()
    seed: int = 0
    activation_shape: tuple[int, ...] | None = None  # per sample; checked on every frame when set


@dataclass(frozen=True, eq=False)
class PartState:
    params: Params
    opt: OptState


@dataclass(frozen=True, eq=False)
class ServerState:
    round: int
    shared: PartState
    copies: Mapping[ClientId, PartState] = field(default_factory=dict)  # splitfed_v1
    samples: Mapping[ClientId, int] = field(default_factory=dict)  # this round, per client
    loss: float = 0.0  # sum of server-side batch losses this round
    steps: int = 0
    pending: Mapping[ClientId, Any] = field(default_factory=dict)  # ushape, transient


def _fresh_part(cfg: ServerConfig, params: Params) -> PartState:
    mask = trainable(cfg.module)
    return PartState(list(params), opt_init(cfg.opt, [p for p, t in zip(params, mask, strict=True) if t]))


def server_init(cfg: ServerConfig, params: Params | None = None) -> ServerState:
    """The server side at round 0, from ``params`` or the module's own initial weights."""
    return ServerState(0, _fresh_part(cfg, get_params(cfg.module) if params is None else params))


def server_begin_round(state: ServerState, round: int) -> ServerState:
    return ServerState(round, state.shared)


def state_to_arrays(state: ServerState) -> dict[str, np.ndarray]:
    """Checkpoint form of the state between rounds: the shared part and its optimizer state
    (V1 copies, sample counts and U-shape graphs live within a round and are not kept)."""
    if state.copies or state.pending:
        raise ValueError("the split server state holds a round in progress; checkpoint it between rounds")
    opt = state.shared.opt
    out = {"round": np.array(state.round), "opt_step": np.array(opt.step), "opt_kinds": np.array(len(opt.buffers))}
    out |= {f"params/{i}": a for i, a in enumerate(state.shared.params)}
    out |= {f"opt/{k}/{i}": a for k, bufs in enumerate(opt.buffers) for i, a in enumerate(bufs)}
    return out


def state_from_arrays(arrays: Mapping[str, np.ndarray]) -> ServerState:
    """Inverse of :func:`state_to_arrays` (copies the arrays)."""
    for key in ("round", "opt_step", "opt_kinds"):
        if key not in arrays:
            raise ValueError(f"split server checkpoint lacks {key!r}")

    def listed(prefix: str) -> Params:
        found = sorted((int(k[len(prefix):]), v) for k, v in arrays.items()
                       if k.startswith(prefix) and k[len(prefix):].isdigit())
        return [np.array(v) for _, v in found]

    bufs = tuple(listed(f"opt/{k}/") for k in range(int(arrays["opt_kinds"])))
    part = PartState(listed("params/"), OptState(int(arrays["opt_step"]), bufs))
    return ServerState(int(arrays["round"]), part)


def average_parts(parts: list[PartState], weights: list[int]) -> PartState:
    """Sample-weighted mean of part copies (params and optimizer buffers)."""
    if not parts:
        raise ValueError("no server part copies to average")
    if sum(weights) <= 0:
        raise ValueError(f"copies need positive sample weights, got {weights}")

    def mean(arrays: list[Params]) -> Params:
        ups = [Update(str(i), a, w) for i, (a, w) in enumerate(zip(arrays, weights, strict=True))]
        return weighted_mean(ups)

    bufs = tuple(mean([p.opt.buffers[k] for p in parts]) for k in range(len(parts[0].opt.buffers)))
    opt = OptState(max(p.opt.step for p in parts), bufs)
    return PartState(mean([p.params for p in parts]), opt)


def server_end_round(cfg: ServerConfig, state: ServerState) -> tuple[ServerState, dict[str, float]]:
    """Close the round: average V1 copies into ``shared``; report server-side loss and samples."""
    shared = state.shared
    if state.copies:
        clients = sorted(state.copies)
        shared = average_parts([state.copies[c] for c in clients], [state.samples[c] for c in clients])
    metrics = {"server_loss": state.loss / max(state.steps, 1), "server_steps": float(state.steps),
               "server_samples": float(sum(state.samples.values()))}
    return ServerState(state.round, shared), metrics


# --------------------------------------------------------------------------------------------
# one message


def _check(cfg: ServerConfig, msg: SplitBatch, labels: bool) -> None:
    if len(msg.tensors) != 1:
        raise ValueError(f"step {msg.step}: expected one {msg.kind} tensor, got {len(msg.tensors)}")
    (a,) = msg.tensors
    if a.dtype.kind != "f":
        raise ValueError(f"step {msg.step}: {msg.kind} must be floating point, got {a.dtype}")
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"step {msg.step}: {msg.kind} need a non-empty batch dimension, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"step {msg.step}: {msg.kind} contain NaN or Inf")
    if msg.kind == "activations" and cfg.activation_shape is not None and a.shape[1:] != cfg.activation_shape:
        raise ValueError(
            f"step {msg.step}: activations per sample are {a.shape[1:]}, the cut gives {cfg.activation_shape}"
        )
    if labels:
        y = msg.labels
        if y is None:
            raise ValueError(f"step {msg.step}: scheme {cfg.scheme} needs labels with the activations")
        if y.dtype.kind not in "iu" or y.shape != (a.shape[0],):
            raise ValueError(f"step {msg.step}: labels must be {a.shape[0]} integers, got {y.dtype} {y.shape}")
    elif msg.labels is not None:
        raise ValueError(f"step {msg.step}: scheme {cfg.scheme} keeps labels on the client; got labels")


def _labels(out: torch.Tensor, y: np.ndarray, step: int) -> torch.Tensor:
    if y.min() < 0 or y.max() >= out.shape[1]:
        raise ValueError(f"step {step}: labels must be in 0..{out.shape[1] - 1}, got {y.min()}..{y.max()}")
    return torch.from_numpy(y.astype(np.int64))


def _input(msg: SplitBatch) -> torch.Tensor:
    return torch.from_numpy(np.require(msg.tensors[0], np.float32, "W")).requires_grad_(True)


def _count(state: ServerState, client: ClientId, n: int, loss: float) -> dict[str, Any]:
    return {"samples": {**state.samples, client: state.samples.get(client, 0) + n},
            "loss": state.loss + loss, "steps": state.steps + 1}


def _loss_step(box: LocalServer, client: ClientId, msg: SplitBatch) -> SplitBatch | None:
    """The server holds the loss: vanilla, splitfed_v1/v2 (reply: dL/dA) and local_loss (no reply)."""
    cfg, st = box.cfg, box.value
    _check(cfg, msg, labels=True)
    key, part = box.part(client)
    a = _input(msg)
    out, ran = part.forward(a, (cfg.seed, "split-server", st.round, client, msg.step))
    assert msg.labels is not None
    loss = F.cross_entropy(out, _labels(out, msg.labels, msg.step))
    ga, *grads = torch.autograd.grad(loss, [a, *part.train])
    value = float(loss.detach())
    part.update(grads, ran)
    box.stepped(key, part, True, **_count(st, client, len(a), value))
    if cfg.scheme == "local_loss":
        return None
    return SplitBatch(msg.step, "gradients", [ga.numpy()], metrics={"loss": value})


def _body_forward(box: LocalServer, client: ClientId, msg: SplitBatch) -> SplitBatch | None:
    """U-shape, first half: run the body, keep its graph, send its output down."""
    cfg, st = box.cfg, box.value
    _check(cfg, msg, labels=False)
    key, part = box.part(client)
    a = _input(msg)
    out, ran = part.forward(a, (cfg.seed, "split-server", st.round, client, msg.step))
    if not isinstance(out, torch.Tensor):
        raise ValueError("the U-shape body must return one tensor")
    pending = {**st.pending, client: (msg.step, part, ran, a, out)}
    box.stepped(key, part, False, pending=pending, samples={**st.samples, client: st.samples.get(client, 0) + len(a)})
    return SplitBatch(msg.step, "activations", [out.detach().numpy()])


def _body_backward(box: LocalServer, client: ClientId, msg: SplitBatch) -> SplitBatch | None:
    """U-shape, second half: dL/dB up -> update the body -> dL/dH down."""
    cfg, st = box.cfg, box.value
    if client not in st.pending or st.pending[client][0] != msg.step:
        raise ValueError(f"step {msg.step}: gradients from {client!r} without a matching body forward")
    step, part, ran, a, out = st.pending[client]
    _check(cfg, msg, labels=False)
    if msg.tensors[0].shape != tuple(out.shape):
        raise ValueError(f"step {step}: gradient shape {msg.tensors[0].shape} != body output {tuple(out.shape)}")
    g = torch.from_numpy(np.require(msg.tensors[0], np.float32, "W"))
    ga, *grads = torch.autograd.grad(out, [a, *part.train], grad_outputs=g)
    part.update(grads, ran)
    pending = {k: v for k, v in st.pending.items() if k != client}
    box.stepped(None, part, True, pending=pending, steps=st.steps + 1)
    return SplitBatch(step, "gradients", [ga.numpy()])


HANDLERS = {
    ("vanilla", "activations"): _loss_step,
    ("splitfed_v1", "activations"): _loss_step,
    ("splitfed_v2", "activations"): _loss_step,
    ("local_loss", "activations"): _loss_step,
    ("ushape", "activations"): _body_forward,
    ("ushape", "gradients"): _body_backward,
    ("sfprompt", "activations"): _body_forward,  # the body is frozen: backward only passes dL/dH down
    ("sfprompt", "gradients"): _body_backward,
}


def server_handle(
    cfg: ServerConfig, state: ServerState, client: ClientId, msg: SplitBatch
) -> tuple[ServerState, SplitBatch | None]:
    """Handle one incoming message of ``client`` as values: (new state, reply); raises
    ValueError on a bad one. ``state`` is never changed (the new one holds copies); a transport
    stepping one state many times holds a :class:`LocalServer` instead."""
    box = LocalServer(cfg, state)
    reply = box.handle(client, msg)
    return box.state, reply


class LocalServer:
    """The server side as a mutable box: the seat of :func:`~fedkit.split.schemes.run_round`
    and of the :class:`~fedkit.split.endpoint.Endpoint`.

    Parts being trained are held live (:class:`~fedkit.split.optim.LivePart`: tensors and
    optimizer buffers updated in place), the shared part or a splitfed_v1 client's copy from its
    first batch on; :attr:`state` reads the value, copying out the parts stepped since the last
    read, and assigning :attr:`state` starts again from a value (what restoring one means). A
    message refused with ValueError changes nothing. Not thread-safe: its holder serialises calls.
    """

    def __init__(self, cfg: ServerConfig, state: ServerState) -> None:
        self.cfg = cfg
        self.value = state  # counters always current; parts in _live are newer than its params
        self._live: dict[ClientId | None, LivePart] = {}  # None: the shared part
        self._dirty: set[ClientId | None] = set()

    @property
    def state(self) -> ServerState:
        if self._dirty:
            shared, copies = self.value.shared, dict(self.value.copies)
            for key in self._dirty:
                lp = self._live[key]
                part = PartState(lp.params(), lp.opt_state())
                if key is None:
                    shared = part
                else:
                    copies[key] = part
            self.value = replace(self.value, shared=shared, copies=copies)
            self._dirty = set()
        return self.value

    @state.setter
    def state(self, value: ServerState) -> None:
        self.value, self._live, self._dirty = value, {}, set()

    def handle(self, client: ClientId, msg: SplitBatch) -> SplitBatch | None:
        """One message of ``client`` in, the reply out; raises ValueError (nothing changed) on a bad one."""
        handler = HANDLERS.get((self.cfg.scheme, msg.kind))
        if handler is None:
            raise ValueError(f"scheme {self.cfg.scheme!r} does not accept {msg.kind} from the client")
        return handler(self, client, msg)

    def drop(self, client: ClientId, loss: float, steps: int) -> None:
        """splitfed_v1: forget ``client``'s copy, samples and pending graph this round, and the
        ``loss`` and ``steps`` its batches added."""
        self._live.pop(client, None)
        self._dirty.discard(client)
        v = self.value
        self.value = replace(
            v,
            copies={k: p for k, p in v.copies.items() if k != client},
            samples={k: n for k, n in v.samples.items() if k != client},
            pending={k: p for k, p in v.pending.items() if k != client},
            loss=v.loss - loss,
            steps=v.steps - steps,
        )

    # the handlers' side

    def part(self, client: ClientId) -> tuple[ClientId | None, LivePart]:
        """(key, live part) the message of ``client`` trains: its copy in splitfed_v1 (forked from
        the shared part at its first batch), else the shared part; held once :meth:`stepped`."""
        key = client if self.cfg.scheme == "splitfed_v1" else None
        lp = self._live.get(key)
        if lp is None:
            base = self.value.shared if key is None else self.value.copies.get(client, self.value.shared)
            lp = LivePart(self.cfg.module, self.cfg.opt, base.params, base.opt)
        return key, lp

    def stepped(self, key: ClientId | None, part: LivePart, changed: bool, **counters: Any) -> None:
        self._live[key] = part
        if changed:
            self._dirty.add(key)
        self.value = replace(self.value, **counters)
