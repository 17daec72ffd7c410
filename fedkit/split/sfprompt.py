"""SFPrompt: split learning + federated prompt tuning of a pre-trained model.

Reference: Cao, Zhu & Gong, "SFPrompt: Communication-Efficient Split Federated Fine-Tuning for
Large Pre-Trained Models over Resource-Limited Devices", arXiv 2407.17533 (REFERENCES.md A3).

The pre-trained model is cut twice, as in U-shaped SL (:mod:`fedkit.split.schemes`, ``ushape``):
the client holds the **head** (embedding, the shallow prompt tokens, the first block(s)) and the
**tail** (the last block(s), the norm and the classifier); the server holds the **body** (the
middle blocks), frozen. What trains is what the PEFT section names: the prompts (in the head)
and the ``train_also`` modules (in the tail); the frozen rest of the head and tail are constants
of the client's modules (:func:`constants`), so the client's ``Params`` -- what the fed channel
carries and the fed server FedAvgs -- are exactly prompts + trainable tail tensors. A trainable
tensor in the body is refused (:func:`sfprompt_parts`), as is a cut where the tail cannot take
the head's output (the local-loss step below feeds it straight in).

Per task (one client, one round), :func:`train_sfprompt` runs three phases:

1. **EL2N pruning** (Paul et al., NeurIPS 2021): every local sample is scored by
   ``||softmax(f(x)) - onehot(y)||_2`` with the *current full model* head -> body -> tail, and
   the ``ceil(gamma n)`` hardest are kept (:func:`keep_hardest`; ties by sample order). The body
   lives on the server, so scoring costs one forward over the wire: the head's output of every
   sample goes up and the body's output comes down (``bytes_activations_up/down``, counted like
   every frame), no labels, no gradients. Scoring through the head and tail alone would be free
   but would score a different model than the one being trained; we pay for the real score.
   On the wire these are U-shape's activations frames; the scheme lets the next step's
   activations follow a step's activations (``Scheme.forward_only``), which is how the server
   knows no backward is coming. ``gamma: 1`` keeps every sample and skips scoring (and its bytes).
   ``score: local`` scores with head -> tail instead (the model the local-loss step trains): free
   on the wire, but a proxy. At ``gamma`` g, wire scoring costs 2 frames per sample against the
   4 g a split step saves, so it pays for itself in bytes only below g = 0.5.
2. **Split training** on the kept samples: ushape's step (:func:`fedkit.split.client._ushape`)
   for ``train.epochs`` (or ``train.steps``); the server runs the frozen body forward and passes
   ``dL/dH`` back; nothing on the server changes.
3. **Local-loss step**: ``local_epochs`` epochs over *all* local samples of prompts + tail with
   the body skipped (``tail(head(x))``), no communication at all (the channel it is handed
   refuses any message). It costs the client only head + tail compute, which is why it may use
   every sample.

The optimizer state runs through the three phases (fresh per task, as in FL training); the
batches of phase 2 come from the task's ``train`` generator, those of phase 3 from
``rng(seed, "sfprompt-local", round, client)``. The fed server then FedAvgs the client parts (any
FL aggregator applies). Labels never leave the client.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from fedkit.models.train import TrainConfig
from fedkit.rng import rng as keyed_rng
from fedkit.split.channel import SplitBatch, SplitChannel
from fedkit.split.client import (
    Call,
    ClientConfig,
    Grads,
    _grad,
    _reply,
    _ushape,
    anchor_of,
    live_parts,
    run_steps,
)
from fedkit.split.optim import LivePart
from fedkit.split.partition import split
from fedkit.split.privacy import Guard
from fedkit.types import ClientId, Params

__all__ = ["SFPrompt", "constants", "el2n", "keep_hardest", "score", "sfprompt_parts", "train_sfprompt"]


@dataclass(frozen=True)
class SFPrompt:
    """The scheme's knobs: keep the hardest ``gamma`` of each client's samples for split
    training, scored by the whole ``model`` or the ``local`` body-skipping one; ``local_epochs``
    of the body-skipping local-loss step (0: none)."""

    gamma: float = 0.5
    local_epochs: int = 1
    score: str = "model"  # "model": head -> body (over the wire) -> tail; "local": head -> tail

    def __post_init__(self) -> None:
        if self.score not in ("model", "local"):
            raise ValueError(f"sfprompt.score must be 'model' or 'local', got {self.score!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"sfprompt.gamma must be in (0, 1] (the share of samples kept), got {self.gamma}")
        if self.local_epochs < 0:
            raise ValueError(f"sfprompt.local_epochs must be >= 0, got {self.local_epochs}")


def el2n(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """EL2N scores ``||softmax(logits) - onehot(y)||_2`` per sample (float64).

    >>> el2n(torch.zeros(1, 2), torch.tensor([0])).round(4).tolist()
    [0.7071]
    """
    p = torch.softmax(logits.detach().double(), dim=1)
    onehot = F.one_hot(y.long(), p.shape[1]).double()
    return torch.linalg.vector_norm(p - onehot, dim=1).numpy()


def keep_hardest(scores: np.ndarray, gamma: float) -> np.ndarray:
    """Indices of the ``ceil(gamma n)`` highest scores, ascending (ties: the earlier sample).

    >>> keep_hardest(np.array([0.1, 0.9, 0.5, 0.9, 0.2]), 0.5).tolist()
    [1, 2, 3]
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    n = len(scores)
    k = min(n, math.ceil(gamma * n - 1e-9))  # 0.3 * 10 is 3.0000000000000004: still 3
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:k])


def constants(part: nn.Module) -> nn.Module:
    """``part`` with every frozen parameter turned into a non-persistent buffer, in place: the
    forward is unchanged, but ``state_dict`` (the ``Params`` that travel) holds only what trains.

    A traced part's own attributes (a ViT's class token and positions) are re-registered as
    *persistent* buffers when fx deep-copies a GraphModule; a deepcopy hook marks them again."""
    for m in part.modules():
        names = []
        for name, p in list(m._parameters.items()):
            if p is not None and not p.requires_grad:
                del m._parameters[name]
                m.register_buffer(name, p.detach(), persistent=False)
                names.append(name)
        if names and isinstance(m, fx.GraphModule):
            m._register_deepcopy_hook(functools.partial(_non_persistent, tuple(names)))
    return part


def _non_persistent(names: tuple[str, ...], copied: nn.Module) -> None:
    copied._non_persistent_buffers_set.update(names)


def sfprompt_parts(
    model: nn.Module, cuts: Sequence[str], input_shape: Sequence[int]
) -> tuple[nn.Module, nn.Module, nn.Module, tuple[int, ...], tuple[int, ...]]:
    """(head, body, tail, head output shape, body output shape) of ``model`` cut at ``cuts``.

    ``model`` is a :class:`fedkit.peft.model.Trainable` (its base is cut) or a plain module whose
    frozen parameters have ``requires_grad`` False. The body must be frozen and its output shape
    must equal its input's (the local-loss step feeds the head's output to the tail)."""
    from fedkit.peft.model import Trainable

    base = model.inner if isinstance(model, Trainable) else model
    if len(cuts) != 2:
        raise ValueError(f"sfprompt takes two cuts (head/body, body/tail), got {list(cuts)}")
    sm = split(base, cuts)
    head, body, tail = sm.parts
    trained = [n for n, p in body.named_parameters() if p.requires_grad]
    if any(n.rsplit(".", 1)[-1] == "prompt" for n in trained):
        raise ValueError(f"sfprompt: the prompt tokens fall in the body (cuts {list(cuts)}); the client's head "
                         "holds them: make the first cut after the first block (e.g. blocks.0)")
    if trained:
        more = f" and {len(trained) - 3} more" if len(trained) > 3 else ""
        raise ValueError(
            f"sfprompt: the body between cuts {cuts[0]!r} and {cuts[1]!r} stays frozen on the server, but "
            f"{', '.join(trained[:3])}{more} would train; move the cuts or leave those modules out of peft.train_also"
        )
    with torch.no_grad():
        h = head(torch.zeros((2, *input_shape)))
        b = body(h)
    if not isinstance(h, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError("sfprompt: the head and the body must each return one tensor")
    hs, bs = tuple(int(d) for d in h.shape[1:]), tuple(int(d) for d in b.shape[1:])
    if hs != bs:
        raise ValueError(
            f"sfprompt skips the body in its local-loss step, so the tail must take the head's output: "
            f"cut {cuts[0]!r} gives {hs} per sample but the body hands the tail {bs} at cut {cuts[1]!r}; "
            "cut between blocks of the same width (e.g. after blocks.0 and blocks.1)"
        )
    prompts = [n for n, p in tail.named_parameters() if p.requires_grad and n.rsplit(".", 1)[-1] == "prompt"]
    if prompts:
        raise ValueError(f"sfprompt: prompt tokens {prompts} fall in the tail; the head holds the (shallow) prompts")
    return constants(head), body, constants(tail), hs, bs


class _Offline:
    """The local-loss step's channel: any message is a bug (that step never communicates)."""

    def exchange(self, msg: SplitBatch) -> SplitBatch | None:
        raise RuntimeError(f"sfprompt's local-loss step tried to send {msg.kind} (step {msg.step}); it sends nothing")


def _skip_body(call: Call, tr: list[list[torch.Tensor]], xb: torch.Tensor, yb: torch.Tensor, ch: SplitChannel,
               step: int, guard: Guard) -> tuple[Grads, float]:
    """Phase 3: the loss of ``tail(head(x))``, prompts + tail trained, no message."""
    loss = F.cross_entropy(call(1, call(0, xb)), yb)
    return _grad(loss, [*tr[0], *tr[1]]), float(loss.detach())


def score(
    cfg: ClientConfig, lives: Sequence[LivePart], x: torch.Tensor, y: torch.Tensor, channel: SplitChannel,
    *, round: int, client: ClientId, local: bool = False,
) -> tuple[np.ndarray, int]:
    """Phase 1: EL2N of every sample through head -> body (over ``channel``) -> tail, in batches of
    ``train.batch_size`` (what the server's frames are sized for), steps 0, 1, ...; (scores,
    steps used). ``local``: through head -> tail with the body skipped, as the local-loss step
    runs the model: no message, 0 steps used."""
    guard = Guard(cfg.defence, cfg.seed, round, client)
    out: list[np.ndarray] = []
    bs, step = cfg.train.batch_size, 0
    with torch.no_grad():
        for k, lo in enumerate(range(0, len(y), bs)):
            key = (cfg.seed, "sfprompt-score", round, client, k)
            h = lives[0].forward(x[lo : lo + bs], (*key, 0))[0]
            if not local:
                h, _ = _reply(channel, SplitBatch(step, "activations", [guard.smash(h, step)]), "activations")
                step += 1
            out.append(el2n(lives[1].forward(h, (*key, 1))[0], y[lo : lo + bs]))
    return (np.concatenate(out) if out else np.zeros(0)), step


def train_sfprompt(
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
    """One client's SFPrompt task: score, prune, split-train, local-loss step (module docstring).

    Metrics: ``loss`` (mean tail loss of the split steps), ``steps`` (split steps), ``samples``
    (split-trained samples), ``kept`` (samples kept by pruning), ``score_steps``,
    ``local_loss`` and ``local_steps`` (phase 3).
    """
    opts = cfg.sfprompt or SFPrompt()
    lives = live_parts(cfg, params)
    anchor = anchor_of(cfg, lives)
    if opts.gamma < 1:
        scores, first = score(cfg, lives, x, y, channel, round=round, client=client, local=opts.score == "local")
        keep = torch.from_numpy(keep_hardest(scores, opts.gamma))
    else:  # every sample is kept: nothing to score, nothing to send for it
        first, keep = 0, torch.arange(len(y))
    total, steps, samples = run_steps(cfg, lives, _ushape, x[keep], y[keep], channel, rng, cfg.train,
                                      round=round, client=client, anchor=anchor, first=first)
    local_total, local_steps = 0.0, 0
    if opts.local_epochs:
        local = TrainConfig(**(cfg.train.model_dump() | {"epochs": opts.local_epochs, "steps": None}))
        gen = keyed_rng(cfg.seed, "sfprompt-local", round, client)
        local_total, local_steps, _ = run_steps(cfg, lives, _skip_body, x, y, _Offline(), gen, local,
                                                round=round, client=client, anchor=anchor, first=first + steps)
    if not (np.isfinite(total) and np.isfinite(local_total)):
        raise FloatingPointError("sfprompt training diverged (loss is NaN or Inf); lower the lr")
    out = [a for lp in lives for a in lp.params(copy=False)]
    return out, {
        "loss": total / max(steps, 1), "steps": float(steps), "samples": float(samples), "kept": float(len(keep)),
        "score_steps": float(first), "local_loss": local_total / max(local_steps, 1), "local_steps": float(local_steps),
    }
