"""Functional optimizers and the parts being trained: values at the edges, tensors in between.

Split learning keeps many parts alive at once (one server copy per client in SplitFed V1, a
client part per simulated client), so one architecture module per part serves every copy through
``torch.func.functional_call`` and nothing is written into it. A part *at rest* is a value,
``(params, OptState)`` of numpy arrays: what the server state holds, checkpoints, averages and
restores. A part *being trained* is a :class:`LivePart`: its tensors and optimizer buffers,
copied in once, updated in place step after step (no numpy round trip, no per-step unpacking),
run as a plain call of a per-thread copy of the architecture that holds its tensors (so
threads never share a module running someone's weights), and copied out once (:meth:`LivePart.params`, :meth:`LivePart.opt_state`) at a task's end or
wherever its holder needs a value.

The rules follow ``torch.optim.SGD`` (momentum, weight decay; the first step seeds the buffer
with the gradient) and ``torch.optim.Adam`` (bias-corrected), configured by the same
:class:`fedkit.models.TrainConfig` fields FL training uses (``optimizer``, ``lr``, ``momentum``,
``weight_decay``). In place or out of place, each rule rounds exactly as its out-of-place
formula (``p - lr * g``, ``m * b + g``, ...), so both give the same bits.

Keyed randomness: a part's forward runs under :func:`seeded` only when it may draw from torch's
RNG (:func:`stochastic`: dropout and other random layers, decided once per module); a part that
draws nothing gives the same result either way, without the cost.
"""

from __future__ import annotations

import copy
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.func import functional_call

from fedkit.models.train import TrainConfig
from fedkit.rng import seed_int
from fedkit.types import Params

__all__ = [
    "OPTIMIZERS", "LivePart", "OptState", "opt_init", "opt_step", "seeded", "stochastic", "tensors",
    "trainable",
]


@dataclass(frozen=True, eq=False)
class OptState:
    """Step count and per-rule buffers (one tuple entry per trainable tensor and buffer kind)."""

    step: int
    buffers: tuple[Params, ...]


Tensors = list[torch.Tensor]
Rule = Callable[[TrainConfig, int, Tensors, Tensors, tuple[Tensors, ...]], None]
"""(cfg, steps taken before, params, grads, buffers) -> None: updates params and buffers in place."""
OPTIMIZERS: dict[str, tuple[int, Rule]] = {}  # name -> (buffer kinds, rule)


def _rule(name: str, kinds: int) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        OPTIMIZERS[name] = (kinds, fn)
        return fn

    return deco


@_rule("sgd", 1)
def _sgd(cfg: TrainConfig, step: int, ps: Tensors, gs: Tensors, bufs: tuple[Tensors, ...]) -> None:
    for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
        if cfg.weight_decay:
            g = g + cfg.weight_decay * p
        if cfg.momentum:
            b = bufs[0][i]
            if step == 0:
                b.copy_(g)
            else:
                b.mul_(cfg.momentum).add_(g)  # = momentum * b + g, same rounding
            g = b
        p.sub_(cfg.lr * g)  # = p - lr * g (not add_(alpha=): that may fuse into one rounding)


@_rule("adam", 2)
def _adam(cfg: TrainConfig, step: int, ps: Tensors, gs: Tensors, bufs: tuple[Tensors, ...]) -> None:
    b1, b2, eps, t = 0.9, 0.999, 1e-8, step + 1
    for p, g, m, v in zip(ps, gs, bufs[0], bufs[1], strict=True):
        if cfg.weight_decay:
            g = g + cfg.weight_decay * p
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        denom = (v / (1 - b2**t)).sqrt() + eps
        p.sub_((cfg.lr / (1 - b1**t)) * m / denom)


def _kinds(cfg: TrainConfig) -> int:
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[cfg.optimizer][0]


def opt_init(cfg: TrainConfig, params: Sequence[np.ndarray]) -> OptState:
    """Zero buffers for the trainable ``params``."""
    return OptState(0, tuple([np.zeros_like(p) for p in params] for _ in range(_kinds(cfg))))


def _own(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a))  # a private copy: the caller's array is never written


def opt_step(cfg: TrainConfig, st: OptState, params: Tensors, grads: Tensors) -> tuple[OptState, Params]:
    """One update of ``params`` (tensors) by ``grads`` as values: new arrays, inputs untouched."""
    bufs = tuple([_own(b) for b in kind] for kind in st.buffers)
    new = [p.detach().clone() for p in params]
    with torch.no_grad():
        OPTIMIZERS[cfg.optimizer][1](cfg, st.step, new, list(grads), bufs)
    return OptState(st.step + 1, tuple([b.numpy() for b in kind] for kind in bufs)), [p.numpy() for p in new]


# --------------------------------------------------------------------------------------------
# what a module is made of: state_dict layout, trainable mask, tied weights, randomness

_RANDOM = re.compile(r"dropout|rand|bernoulli|normal|multinomial|poisson|rrelu|uniform|exponential|"
                     r"geometric|cauchy|fractional|gumbel|attention", re.IGNORECASE)
"""Names of torch modules, functions and methods that may draw from torch's RNG (a superset:
``F.normalize`` matches too, which only costs a seeding)."""


def _draws(module: nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, fx.GraphModule):
            for n in m.graph.nodes:
                if n.op in ("call_function", "call_method"):
                    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
                    if _RANDOM.search(name):
                        return True
        elif not type(m).__module__.startswith("torch.nn."):
            return True  # a forward we cannot read: assume it draws
        elif _RANDOM.search(type(m).__name__) or isinstance(getattr(m, "dropout", None), float) and m.dropout:
            return True  # Dropout*, RReLU, FractionalMaxPool*; RNN / attention layers with dropout
    return False


@dataclass(frozen=True, eq=False)
class _Layout:
    params: tuple[torch.Tensor, ...]  # the module's parameters, to re-read requires_grad
    flags: tuple[bool, ...]
    keys: tuple[str, ...]  # state_dict order
    mask: tuple[bool, ...]  # per key: a trainable parameter?
    tied: bool  # two state_dict keys name one tensor
    draws: bool  # the forward may draw from torch's RNG


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, _Layout] = weakref.WeakKeyDictionary()


def _layout(module: nn.Module) -> _Layout:
    """State_dict keys, trainable mask, tied weights and randomness, cached per module: building
    a state_dict costs more than a small part's forward. A parameter frozen (requires_grad)
    after the fact is seen; a part's structure is fixed once it is cut."""
    hit = _LAYOUTS.get(module)
    if hit is None or tuple(p.requires_grad for p in hit.params) != hit.flags:
        params = tuple(module.parameters())
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        sd = module.state_dict(keep_vars=True)
        keys = tuple(sd)
        tied = len({id(t) for t in sd.values()}) < len(keys)
        hit = _Layout(params, tuple(p.requires_grad for p in params), keys, tuple(k in names for k in keys),
                      tied, _draws(module))
        _LAYOUTS[module] = hit
    return hit


def trainable(module: nn.Module) -> list[bool]:
    """For each state_dict entry (the ``Params`` order): is it a trainable parameter?"""
    return list(_layout(module).mask)


def stochastic(module: nn.Module) -> bool:
    """May ``module``'s forward draw from torch's RNG? True for dropout-like torch.nn layers (and
    RNN / attention layers with dropout), traced graphs calling random functions, and any module
    type outside torch.nn (its forward is not known); decided once per module."""
    return _layout(module).draws


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


# --------------------------------------------------------------------------------------------
# a part being trained

_THREAD = threading.local()


class _Seat:
    """This thread's copy of an architecture module, and which part's tensors it holds now.

    A part runs by putting its tensors into the copy's parameter and buffer slots (what
    ``functional_call`` does around every call, here only when another part ran last), so a
    forward is a plain call; the shared architecture module is never written into, and threads
    never share a copy (a module running one thread's weights would serve them to another).
    """

    def __init__(self, module: nn.Module, keys: Sequence[str]) -> None:
        self.module = copy.deepcopy(module)
        self.slots: list[dict[str, Any]] = []  # per state_dict key: the dict holding its tensor
        self.names: list[str] = []
        self.direct = True  # every key names a parameter or buffer slot (else: functional_call)
        for key in keys:
            path, _, name = key.rpartition(".")
            sub = self.module.get_submodule(path)
            slot = sub._parameters if name in sub._parameters else sub._buffers
            self.direct &= name in slot
            self.slots.append(slot)
            self.names.append(name)
        self.owner: weakref.ref[LivePart] | None = None

    def load(self, ts: Sequence[torch.Tensor], only: Sequence[int] | None = None) -> None:
        for i in range(len(ts)) if only is None else only:
            self.slots[i][self.names[i]] = ts[i]


def _seat(module: nn.Module, keys: Sequence[str]) -> _Seat:
    seats: weakref.WeakKeyDictionary[nn.Module, _Seat] | None = getattr(_THREAD, "seats", None)
    if seats is None:
        seats = _THREAD.seats = weakref.WeakKeyDictionary()
    seat = seats.get(module)
    if seat is None:
        seat = seats[module] = _Seat(module, keys)
    if seat.module.training != module.training:
        seat.module.train(module.training)
    return seat


class LivePart:
    """One part being trained: its state_dict tensors and optimizer buffers, owned and updated
    in place (built from copies of ``params`` and ``opt``; fresh zero buffers without ``opt``).

    ``train`` are the trainable tensors (leaves requiring grad) in state_dict order, the ones
    gradients are taken for. A step is :meth:`forward` then :meth:`update`. Non-trainable entries
    (BatchNorm statistics, frozen weights), which a forward writes in place, go into each forward
    as copies and are adopted by :meth:`update` only: a step that fails between the two (a
    refused frame) leaves the part exactly as it was.
    """

    def __init__(self, module: nn.Module, cfg: TrainConfig, params: Params, opt: OptState | None = None) -> None:
        layout = _layout(module)
        if len(layout.keys) != len(params):
            raise ValueError(f"part has {len(layout.keys)} tensors, got {len(params)} arrays")
        kinds = _kinds(cfg)
        self.module, self.cfg, self._layout = module, cfg, layout
        self.tensors: dict[str, torch.Tensor] = {}
        for k, a, tr in zip(layout.keys, params, layout.mask, strict=True):
            t = _own(a)
            self.tensors[k] = t.requires_grad_(True) if tr else t
        self.train: Tensors = [self.tensors[k] for k, tr in zip(layout.keys, layout.mask, strict=True) if tr]
        self._fixed = [k for k, tr in zip(layout.keys, layout.mask, strict=True) if not tr]
        self._fixed_at = [i for i, tr in enumerate(layout.mask) if not tr]
        if opt is None:
            self.step, self.buffers = 0, tuple([torch.zeros_like(t) for t in self.train] for _ in range(kinds))
        else:
            if len(opt.buffers) != kinds or any(len(b) != len(self.train) for b in opt.buffers):
                raise ValueError(f"optimizer state does not fit {cfg.optimizer} on {len(self.train)} tensors")
            self.step, self.buffers = opt.step, tuple([_own(b) for b in kind] for kind in opt.buffers)

    def forward(self, inp: torch.Tensor, key: tuple[Any, ...] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(output, the tensors it ran with); torch's randomness keyed by ``key`` = (seed, *parts)
        when the module may draw from it."""
        ts = self.tensors
        if self._fixed:
            ts = dict(ts) | {k: ts[k].clone() for k in self._fixed}
        seat = _seat(self.module, self._layout.keys)
        if self._layout.tied or not seat.direct:  # functional_call keeps ties, knows extra state
            run: Callable[[], torch.Tensor] = lambda: functional_call(seat.module, ts, (inp,), tie_weights=True)  # noqa: E731
            seat.owner = None
        else:
            if seat.owner is None or seat.owner() is not self:
                seat.load(list(ts.values()))
                seat.owner = weakref.ref(self)
            elif self._fixed:
                values = list(ts.values())
                seat.load(values, self._fixed_at)
            run = lambda: seat.module(inp)  # noqa: E731
        if key is not None and self._layout.draws:
            with seeded(*key):
                return run(), ts
        return run(), ts

    def update(self, grads: Sequence[torch.Tensor | None], ran: dict[str, torch.Tensor] | None = None) -> None:
        """One optimizer step with ``grads`` (for :attr:`train`; None: zero), in place; adopts the
        non-trainable tensors the forward ``ran`` with."""
        gs = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, self.train, strict=True)]
        with torch.no_grad():
            OPTIMIZERS[self.cfg.optimizer][1](self.cfg, self.step, self.train, gs, self.buffers)
        self.step += 1
        if ran is not None:
            for k in self._fixed:
                self.tensors[k] = ran[k]

    def params(self, copy: bool = True) -> Params:
        """The params in state_dict order (``copy=False``: views, for a part trained no further)."""
        out = [t.detach().numpy() for t in self.tensors.values()]
        return [a.copy() for a in out] if copy else out

    def opt_state(self, copy: bool = True) -> OptState:
        bufs = tuple([b.numpy().copy() if copy else b.numpy() for b in kind] for kind in self.buffers)
        return OptState(self.step, bufs)
