"""Functional optimizers and parameter plumbing for model parts kept as values.

Split learning keeps many parts alive at once (one server copy per client in SplitFed V1, a
client part per simulated client), so a part is a value, ``(params, OptState)``, not a live
``nn.Module`` with a ``torch.optim`` object attached. One architecture module per part serves
every copy through ``torch.func.functional_call``; nothing is written into it.

The rules follow ``torch.optim.SGD`` (momentum, weight decay; the first step seeds the buffer
with the gradient) and ``torch.optim.Adam`` (bias-corrected), configured by the same
:class:`fedkit.models.TrainConfig` fields FL training uses (``optimizer``, ``lr``, ``momentum``,
``weight_decay``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedkit.models.train import TrainConfig
from fedkit.rng import seed_int
from fedkit.types import Params

__all__ = ["OPTIMIZERS", "OptState", "opt_init", "opt_step", "seeded", "tensors", "trainable"]


@dataclass(frozen=True, eq=False)
class OptState:
    """Step count and per-rule buffers (one tuple entry per trainable tensor and buffer kind)."""

    step: int
    buffers: tuple[Params, ...]


Tensors = list[torch.Tensor]
Rule = Callable[[TrainConfig, OptState, Tensors, Tensors], tuple[OptState, Tensors]]
OPTIMIZERS: dict[str, tuple[int, Rule]] = {}  # name -> (buffer kinds, rule)


def _rule(name: str, kinds: int) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        OPTIMIZERS[name] = (kinds, fn)
        return fn

    return deco


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def _n(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


@_rule("sgd", 1)
def _sgd(cfg: TrainConfig, st: OptState, ps: Tensors, gs: Tensors) -> tuple[OptState, Tensors]:
    out, bufs = [], []
    for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
        if cfg.weight_decay:
            g = g + cfg.weight_decay * p
        if cfg.momentum:
            g = g if st.step == 0 else cfg.momentum * _t(st.buffers[0][i]) + g
            bufs.append(_n(g))
        out.append(p - cfg.lr * g)
    return OptState(st.step + 1, (bufs,) if cfg.momentum else st.buffers), out


@_rule("adam", 2)
def _adam(cfg: TrainConfig, st: OptState, ps: Tensors, gs: Tensors) -> tuple[OptState, Tensors]:
    b1, b2, eps, t = 0.9, 0.999, 1e-8, st.step + 1
    out, ms, vs = [], [], []
    for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
        if cfg.weight_decay:
            g = g + cfg.weight_decay * p
        m = b1 * _t(st.buffers[0][i]) + (1 - b1) * g
        v = b2 * _t(st.buffers[1][i]) + (1 - b2) * g * g
        denom = (v / (1 - b2**t)).sqrt() + eps
        out.append(p - (cfg.lr / (1 - b1**t)) * m / denom)
        ms.append(_n(m))
        vs.append(_n(v))
    return OptState(t, (ms, vs)), out


def opt_init(cfg: TrainConfig, params: Sequence[np.ndarray]) -> OptState:
    """Zero buffers for the trainable ``params``."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    kinds = OPTIMIZERS[cfg.optimizer][0]
    return OptState(0, tuple([np.zeros_like(p) for p in params] for _ in range(kinds)))


def opt_step(cfg: TrainConfig, st: OptState, params: Tensors, grads: Tensors) -> tuple[OptState, Params]:
    """One update of ``params`` (tensors) by ``grads``; returns new arrays, inputs untouched."""
    with torch.no_grad():
        st, new = OPTIMIZERS[cfg.optimizer][1](cfg, st, [p.detach() for p in params], grads)
    return st, [_n(p) for p in new]  # fresh tensors: the inputs are never written


# --------------------------------------------------------------------------------------------
# Params <-> the tensors functional_call needs


@dataclass(frozen=True, eq=False)
class _Layout:
    params: tuple[torch.Tensor, ...]  # the module's parameters, to re-read requires_grad
    flags: tuple[bool, ...]
    keys: tuple[str, ...]  # state_dict order
    mask: tuple[bool, ...]  # per key: a trainable parameter?


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, _Layout] = weakref.WeakKeyDictionary()


def _layout(module: nn.Module) -> _Layout:
    """State_dict keys and trainable mask, cached per module: building a state_dict costs more
    than a small part's forward, and a split step asks several times. A parameter frozen
    (requires_grad) after the fact is seen; a part's structure is fixed once it is cut."""
    hit = _LAYOUTS.get(module)
    if hit is None or tuple(p.requires_grad for p in hit.params) != hit.flags:
        params = tuple(module.parameters())
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        keys = tuple(module.state_dict())
        hit = _Layout(params, tuple(p.requires_grad for p in params), keys, tuple(k in names for k in keys))
        _LAYOUTS[module] = hit
    return hit


def trainable(module: nn.Module) -> list[bool]:
    """For each state_dict entry (the ``Params`` order): is it a trainable parameter?"""
    return list(_layout(module).mask)


def tensors(module: nn.Module, params: Params, grad: bool = True) -> dict[str, torch.Tensor]:
    """state_dict name -> tensor viewing ``params`` (trainable ones require grad when ``grad``)."""
    layout = _layout(module)
    keys, mask = layout.keys, layout.mask
    if len(keys) != len(params):
        raise ValueError(f"part has {len(keys)} tensors, got {len(params)} arrays")
    out = {}
    for k, a, tr in zip(keys, params, mask, strict=True):
        if tr:
            t = torch.from_numpy(np.require(a, requirements="W"))
            out[k] = t.requires_grad_(True) if grad else t
        else:  # buffers (BatchNorm statistics) are updated in place: never write the caller's array
            out[k] = torch.from_numpy(np.array(a))
    return out


@contextmanager
def seeded(seed: int, *parts: int | str) -> Iterator[None]:
    """Run torch's randomness (dropout) from the key (seed, *parts); the global RNG is restored.

    Seeds the CPU generator only (what ``fork_rng(devices=[])`` saves): ``torch.manual_seed`` also
    queues lazy CUDA/XPU/MTIA seeding, each recording a stack trace, which costs more than a
    small model's whole training step when called twice per split step.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed_int(seed, *parts))
        yield
