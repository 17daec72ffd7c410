"""The client side of split learning: :func:`train_split` runs a client's local epochs over a
:class:`~fedkit.split.channel.SplitChannel` and returns its updated part(s) as ``Params``.

The client's part is one ``Params`` list so any FL aggregator can average it: the client part
(vanilla, splitfed_v1/v2), head + tail (ushape, sfprompt), or client part + auxiliary head (local_loss),
each module's state_dict in turn. Batches are those of :func:`fedkit.models.train` for the same
``TrainConfig`` and numpy Generator (``fedkit.rng.rng(seed, "train", round, client)``), so a split
run sees exactly the batches an FL run would; dropout draws are keyed by (seed, round, client,
step) and never touch torch's global RNG (parts without random layers are not seeded at
all). FedProx's ``mu`` adds mu * (w - w_start) to the gradient, as the proximal term does in FL
training. The optimizer state is fresh per task, as in FL training. Each module is one
:class:`~fedkit.split.optim.LivePart` for the whole task: ``params`` are copied into tensors once
and the result is read out once, so a step costs no numpy round trip. ``defence``
(:class:`~fedkit.split.privacy.Defence`) adds NoPeek's dCor term to the client part's loss and
keyed Gaussian noise to the smashed data it sends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkit.models.params import get_params
from fedkit.models.train import TrainConfig, batches
from fedkit.split.channel import SplitBatch, SplitChannel
from fedkit.split.optim import LivePart
from fedkit.split.privacy import Defence, Guard
from fedkit.types import ClientId, Params

if TYPE_CHECKING:
    from fedkit.split.sfprompt import SFPrompt

__all__ = ["ClientConfig", "client_params", "train_split"]


@dataclass(frozen=True, eq=False)
class ClientConfig:
    """``modules``: (client,) | (head, tail) for ushape and sfprompt | (client, aux_head) for local_loss."""

    scheme: str
    modules: tuple[nn.Module, ...]
    train: TrainConfig = TrainConfig()
    seed: int = 0
    defence: Defence = Defence()  # NoPeek and activation noise (fedkit.split.privacy)
    sfprompt: SFPrompt | None = None  # scheme sfprompt: gamma and local epochs (None: defaults)


def client_params(modules: Sequence[nn.Module]) -> Params:
    """The client's ``Params``: each module's state_dict in turn."""
    return [a for m in modules for a in get_params(m)]


def _live(modules: Sequence[nn.Module], train: TrainConfig, params: Params) -> list[LivePart]:
    out, i = [], 0
    for m in modules:
        n = len(m.state_dict())
        if i + n > len(params):
            break
        out.append(LivePart(m, train, params[i : i + n]))
        i += n
    if i != len(params) or len(out) != len(modules):
        need = sum(len(m.state_dict()) for m in modules)
        raise ValueError(f"client part has {need} tensors, got {len(params)} arrays")
    return out


Call = Callable[[int, torch.Tensor], torch.Tensor]  # (module index, input) -> output
Grads = list[torch.Tensor | None]
Step = Callable[
    [Call, list[list[torch.Tensor]], torch.Tensor, torch.Tensor, SplitChannel, int, Guard], tuple[Grads, float]
]
"""(call, trainable tensors per module, x, y, channel, step, guard) -> (grads in that order, loss)."""


def _reply(
    channel: SplitChannel, msg: SplitBatch, want: str, like: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """The one tensor of the server's reply, checked, and the server's loss if it sent one."""
    reply = channel.exchange(msg)
    if reply is None or reply.kind != want or reply.step != msg.step or len(reply.tensors) != 1:
        got = "nothing" if reply is None else f"{reply.kind} for step {reply.step}"
        raise ValueError(f"step {msg.step}: expected {want} from the server, got {got}")
    t = torch.from_numpy(np.require(reply.tensors[0], np.float32, "W"))
    if like is not None and t.shape != like.shape:
        raise ValueError(f"step {msg.step}: server sent {want} of shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    return t, float(reply.metrics.get("loss", np.nan))


def _grad(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor | None = None) -> Grads:
    if not inputs or not out.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(out, inputs, grad_out, allow_unused=True))


def _back(a: torch.Tensor, inputs: list[torch.Tensor], grad_a: torch.Tensor, xb: torch.Tensor, guard: Guard) -> Grads:
    """Back-propagate the gradient that came for ``a``, plus NoPeek's term when it is on."""
    pen = guard.penalty(xb, a)
    if pen is None:
        return _grad(a, inputs, grad_a)
    return _grad((a * grad_a).sum() + pen, inputs)


def _server_loss(call: Call, tr: list[list[torch.Tensor]], xb: torch.Tensor, yb: torch.Tensor, ch: SplitChannel, step: int, guard: Guard) -> tuple[Grads, float]:
    a = call(0, xb)
    msg = SplitBatch(step, "activations", [guard.smash(a, step)], yb.numpy())
    grad_a, loss = _reply(ch, msg, "gradients", like=a)
    return _back(a, tr[0], grad_a, xb, guard), loss  # the server's loss, from the reply's metrics


def _ushape(call: Call, tr: list[list[torch.Tensor]], xb: torch.Tensor, yb: torch.Tensor, ch: SplitChannel, step: int, guard: Guard) -> tuple[Grads, float]:
    h = call(0, xb)
    b = _reply(ch, SplitBatch(step, "activations", [guard.smash(h, step)]), "activations")[0].requires_grad_(True)
    loss = F.cross_entropy(call(1, b), yb)
    gb, *g_tail = torch.autograd.grad(loss, [b, *tr[1]], allow_unused=True)
    assert gb is not None
    gh, _ = _reply(ch, SplitBatch(step, "gradients", [gb.numpy()]), "gradients", like=h)
    return [*_back(h, tr[0], gh, xb, guard), *g_tail], float(loss.detach())


def _local_loss(call: Call, tr: list[list[torch.Tensor]], xb: torch.Tensor, yb: torch.Tensor, ch: SplitChannel, step: int, guard: Guard) -> tuple[Grads, float]:
    a = call(0, xb)
    loss = F.cross_entropy(call(1, a), yb)
    pen = guard.penalty(xb, a)
    if ch.exchange(SplitBatch(step, "activations", [guard.smash(a, step)], yb.numpy())) is not None:
        raise ValueError(f"step {step}: local_loss expects no reply from the server")
    return _grad(loss if pen is None else loss + pen, [*tr[0], *tr[1]]), float(loss.detach())


STEPS: dict[str, Step] = {
    "vanilla": _server_loss,
    "splitfed_v1": _server_loss,
    "splitfed_v2": _server_loss,
    "ushape": _ushape,
    "local_loss": _local_loss,
}
_ROLES = {"ushape": 2, "local_loss": 2, "sfprompt": 2}  # modules the client holds; others: 1


def train_split(
    cfg: ClientConfig,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    channel: SplitChannel,
    rng: np.random.Generator,
    *,
    round: int = 0,
    client: ClientId = "",
) -> tuple[Params, dict[str, float]]:
    """Local split training from ``params``: (new client params, {loss, steps, samples}).

    ``loss`` is the mean batch loss the client sees: the server's (from reply metrics) where the
    server holds the loss, the tail's in ushape, the auxiliary head's in local_loss. SFPrompt's
    three phases run in :func:`fedkit.split.sfprompt.train_sfprompt`.
    """
    if cfg.scheme == "sfprompt":
        from fedkit.split.sfprompt import train_sfprompt

        return train_sfprompt(cfg, params, x, y, channel, rng, round=round, client=client)
    if cfg.scheme not in STEPS:
        raise ValueError(f"unknown split scheme {cfg.scheme!r}; known: {', '.join([*STEPS, 'sfprompt'])}")
    lives = live_parts(cfg, params)
    total, steps, samples = run_steps(cfg, lives, STEPS[cfg.scheme], x, y, channel, rng, cfg.train,
                                      round=round, client=client, anchor=anchor_of(cfg, lives))
    params = [a for lp in lives for a in lp.params(copy=False)]
    if cfg.scheme in _ROLES and not np.isfinite(total):
        raise FloatingPointError("split training diverged (loss is NaN or Inf); lower the lr")
    return params, {"loss": total / max(steps, 1), "steps": float(steps), "samples": float(samples)}


def live_parts(cfg: ClientConfig, params: Params) -> list[LivePart]:
    """The client's modules as live parts holding ``params`` (one optimizer for the whole task)."""
    roles = _ROLES.get(cfg.scheme, 1)
    if len(cfg.modules) != roles:
        raise ValueError(f"scheme {cfg.scheme} needs {roles} client modules, got {len(cfg.modules)}")
    return _live(cfg.modules, cfg.train, list(params))


def anchor_of(cfg: ClientConfig, lives: Sequence[LivePart]) -> list[torch.Tensor] | None:
    """FedProx's anchor: the trainable tensors as the task started (None without ``mu``)."""
    return [t.detach().clone() for lp in lives for t in lp.train] if cfg.train.mu > 0 else None


def run_steps(
    cfg: ClientConfig,
    lives: Sequence[LivePart],
    step_fn: Step,
    x: torch.Tensor,
    y: torch.Tensor,
    channel: SplitChannel,
    rng: np.random.Generator,
    train: TrainConfig,
    *,
    round: int,
    client: ClientId,
    anchor: list[torch.Tensor] | None = None,
    first: int = 0,
) -> tuple[float, int, int]:
    """``step_fn`` over the batches of ``train`` (epochs or steps, drawn from ``rng``), updating
    ``lives`` in place; steps are numbered from ``first``. (summed loss, steps, samples)."""
    trains = [lp.train for lp in lives]
    guard = Guard(cfg.defence, cfg.seed, round, client)
    total, steps, samples = 0.0, 0, 0
    for k, idx in enumerate(batches(len(y), train, rng)):
        step = first + k
        ran: list[dict[str, torch.Tensor] | None] = [None] * len(lives)

        def call(i: int, inp: torch.Tensor, step: int = step, ran: list = ran) -> torch.Tensor:  # type: ignore[type-arg]
            out, ran[i] = lives[i].forward(inp, (cfg.seed, "split-client", round, client, step, i))
            return out

        grads, loss = step_fn(call, trains, x[idx], y[idx], channel, step, guard)
        if anchor is not None:
            flat = [t for ts in trains for t in ts]
            full = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, flat, strict=True)]
            grads = [g + train.mu * (t.detach() - a) for g, t, a in zip(full, flat, anchor, strict=True)]
        it = iter(grads)
        for lp, r in zip(lives, ran, strict=True):
            lp.update([next(it) for _ in lp.train], r)
        total += loss  # NaN when a transport sends no server loss: then "loss" is NaN, not made up
        steps += 1
        samples += len(idx)
    return total, steps, samples
