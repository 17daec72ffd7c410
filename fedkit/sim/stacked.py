"""Stacked execution: many small clients trained at once, as one batched computation.

For small models the sequential loop is dispatch-bound: an SGD step of a 60x10 logistic
regression costs ~100 us of framework overhead around ~1 us of arithmetic. Here every training
task of a batch becomes one row of stacked parameters (a leading client dimension) and all
clients take their k-th local step together as a few batched matmuls, so the overhead is paid
once per step index for all clients instead of once per client step.

Same work as sequential, exactly: each client's batches are the ones :func:`batches` draws from
its ``(seed, "train", round, client)`` generator, in the same order; clients that finish early
drop out of the computation (clients are sorted by their number of steps, so the active ones are
a prefix of the stack); a short last batch is padded with zero-weight rows. The update, the
training metrics and the reply then go through the client's own chain (its mods, its codec
state), with the trained parameters handed in by a replacement training function.

Tolerance, and why bit-identity is not possible: the arithmetic runs in float32 like torch's,
but through other kernels (numpy/BLAS batched matmuls, or torch.func.vmap's batched kernels),
with the cross-entropy gradient written by hand (``softmax - onehot`` times ``1/b``) and its sums
accumulated in a different order. Floating-point addition is not associative, so each step
differs from torch's sequential step in the last bits (~1e-7 relative), and SGD carries those
differences along without amplifying them much. Updates agree with sequential ones to about
1e-6 absolute for the reference workloads; the tests hold them to ``atol=1e-5, rtol=1e-4``.

Supported (anything else runs sequentially, with the reason logged once):

- models: ``nn.Sequential`` of Flatten / Linear / ReLU (logreg, MLP without dropout) with
  hand-written gradients in numpy; Sequential models of Flatten, Unflatten, Linear, Conv2d, ReLU,
  Tanh, MaxPool2d, AvgPool2d (the reference CNN) through ``torch.func.vmap`` of ``grad``;
  no buffers, no dropout (its random masks cannot be drawn batch-wise as torch draws them);
- training: the built-in ``sgd_train`` with SGD (momentum, weight decay, FedProx ``mu``); Adam
  and custom training functions run sequentially.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkit import rng as frng
from fedkit.models import LocalData, TrainConfig, set_params
from fedkit.models.train import TrainFn, batch_plan, train_metrics
from fedkit.runtime import task as tasks
from fedkit.runtime.client import ClientHost
from fedkit.runtime.downlink import receive
from fedkit.types import ClientId, Params, Reply, Task

log = logging.getLogger("fedkit.stacked")


@dataclass(frozen=True)
class Job:
    """One client's training task, ready to stack: its start model, data and batches."""

    task: Task
    params: Params
    data: LocalData
    idx: np.ndarray  # its batches' sample indices, in order (fedkit.models.train.batch_plan)
    sizes: np.ndarray  # the size of each batch


Result = tuple[Params, dict[str, float]]
"""Trained parameters (state-dict order) and the metrics the training function reports."""

Program = Callable[[nn.Module, Sequence[Job], TrainConfig], list[Result]]

_LINEAR = (nn.Flatten, nn.Linear, nn.ReLU)
_VMAP = (nn.Flatten, nn.Unflatten, nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d)


def program_for(module: nn.Module, cfg: TrainConfig) -> Program | str:
    """How to train ``module`` stacked under ``cfg``, or why it cannot be."""
    if cfg.fn is not None:
        return f"custom training function {cfg.fn}"
    if cfg.optimizer != "sgd":
        return f"optimizer {cfg.optimizer} (stacked supports sgd)"
    if not isinstance(module, nn.Sequential):
        return f"model {type(module).__name__} is not an nn.Sequential"
    if any(True for _ in module.buffers()):
        return "the model has buffers"
    if any(p.dtype != torch.float32 for p in module.parameters()):
        return "the model's parameters are not float32"
    if len(module.state_dict()) != len(list(module.parameters())):
        return "the model's state has entries that are not parameters"
    layers = [m for m in module.modules() if not isinstance(m, nn.Sequential)]
    for m in layers:
        if isinstance(m, nn.Dropout) and m.p > 0:
            return "dropout (its random masks cannot be drawn batch-wise as torch draws them)"
    layers = [m for m in layers if not (isinstance(m, (nn.Dropout, nn.Identity)))]
    if _is_mlp(layers):
        return _train_mlp
    bad = sorted({type(m).__name__ for m in layers if not isinstance(m, _VMAP)})
    if bad:
        return f"layer type(s) {', '.join(bad)} (stacked supports {', '.join(t.__name__ for t in _VMAP)})"
    return _train_vmap


def _is_mlp(layers: Sequence[nn.Module]) -> bool:
    """Flatten, then biased Linear layers with a ReLU between each two (none after the last)."""
    if not layers or not isinstance(layers[0], nn.Flatten) or (layers[0].start_dim, layers[0].end_dim) != (1, -1):
        return False
    kinds = "".join("L" if isinstance(m, nn.Linear) and m.bias is not None else
                    "R" if isinstance(m, nn.ReLU) else "?" for m in layers[1:])
    return re.fullmatch(r"L(RL)*", kinds) is not None


# ------------------------------------------------------------------------- the batch layout


@dataclass(frozen=True)
class _Layout:
    """Every job's batches, step by step, in one compact array.

    Rows (jobs) are sorted by number of steps, longest first, so at step ``t`` the rows still
    training are the prefix ``[:active[t]]``, and step ``t``'s entries are the
    ``[active[t], width]`` block at ``start[t]``. A row's short batch is padded with the all-zero
    sample at weight 0; a real sample of a batch of ``b`` weighs ``1/b`` (the batch mean).
    """

    order: list[int]  # job index of each row
    steps: np.ndarray  # [K] steps of each row
    active: np.ndarray  # [T] rows still training at step t
    start: np.ndarray  # [T + 1] where step t's block begins
    width: int  # the largest batch
    idx: np.ndarray  # [E] sample (row of x) of each entry
    weight: np.ndarray  # [E] float32
    row: np.ndarray  # [E] the row (job) of each entry
    x: np.ndarray  # [N + 1, ...] float32, the last sample all zero
    y: np.ndarray  # [N + 1] int64

    def block(self, t: int) -> tuple[int, int, int]:
        """(rows active, first entry, end entry) of step t."""
        k = int(self.active[t])
        a = int(self.start[t])
        return k, a, a + k * self.width


def _layout(jobs: Sequence[Job]) -> _Layout:
    K = len(jobs)
    counts = np.array([len(j.sizes) for j in jobs], dtype=np.int64)
    order = sorted(range(K), key=lambda k: -counts[k])
    steps = counts[order]
    t_max = int(steps[0]) if K else 0
    width = max((int(j.sizes.max()) for j in jobs if len(j.sizes)), default=1)
    active = K - np.searchsorted(np.sort(steps), np.arange(t_max), side="right")
    start = np.concatenate([[0], np.cumsum(active * width)]).astype(np.int64)
    sizes = [len(jobs[k].data) for k in order]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_entries = int(start[-1])
    idx = np.full(n_entries, offsets[-1], dtype=np.int64)
    weight = np.zeros(n_entries, dtype=np.float32)
    for r, k in enumerate(order):
        sz = jobs[k].sizes
        if not len(sz):
            continue
        t_of = np.repeat(np.arange(len(sz)), sz)
        slot = np.arange(len(jobs[k].idx)) - np.repeat(np.cumsum(sz) - sz, sz)
        pos = start[t_of] + r * width + slot
        idx[pos] = jobs[k].idx + offsets[r]
        weight[pos] = np.repeat(np.float32(1.0) / sz.astype(np.float32), sz)
    t_of_entry = np.repeat(np.arange(t_max), active * width)
    row = (np.arange(n_entries) - start[t_of_entry]) // width
    feat = jobs[0].data.x.shape[1:]
    xs = [jobs[k].data.x.numpy().astype(np.float32, copy=False) for k in order]
    x = np.concatenate([*xs, np.zeros((1, *feat), np.float32)])
    y = np.concatenate([*(jobs[k].data.y.numpy() for k in order), np.zeros(1, np.int64)])
    return _Layout(order, steps, active, start, width, idx, weight, row, x, y)


class _Sgd:
    """torch.optim.SGD (momentum, weight decay) plus FedProx's term, for every client at once.

    All of a client's parameters live in one row of ``w`` (``[K, P]`` float32; :meth:`views`
    gives each tensor's ``[K, ...]`` view), and the training loop writes ``lr`` times the data
    gradient into the same layout in ``g``, so one step of the active prefix is a few whole-array
    operations: ``w -= g + lr*wd*w + lr*mu*(w - w0)`` (through a momentum buffer if any). FedProx's
    ``mu/2 ||w - w0||^2`` is added to the clients' losses as sequential training does.
    """

    def __init__(self, cfg: TrainConfig, params: Sequence[np.ndarray]):
        self.cfg = cfg
        K = len(params[0])
        self.shapes = [p.shape[1:] for p in params]
        sizes = [int(np.prod(sh)) for sh in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.w = np.concatenate([p.reshape(K, -1) for p in params], axis=1).astype(np.float32)
        self.g = np.zeros_like(self.w)
        self.anchor = self.w.copy() if cfg.mu > 0 else None
        self.pull = None if self.anchor is None else np.float32(cfg.lr * cfg.mu) * self.anchor
        self.decay = np.float32(1.0 - cfg.lr * (cfg.mu + cfg.weight_decay))
        self.buf = np.zeros_like(self.w) if cfg.momentum else None
        self.first = True
        self.prox_sq = np.zeros(K, dtype=np.float64)

    def views(self, arr: np.ndarray) -> list[np.ndarray]:
        """Each parameter tensor's ``[K, ...]`` view into ``arr`` (``w`` or ``g``)."""
        o = self.offsets
        out = [arr[:, o[i] : o[i + 1]].reshape(len(arr), *sh) for i, sh in enumerate(self.shapes)]
        assert all(np.shares_memory(v, arr) for v in out), "a parameter view became a copy"
        return out

    def step(self, k: int) -> None:
        cfg, w, g = self.cfg, self.w[:k], self.g[:k]
        if self.anchor is not None:
            d = w - self.anchor[:k]
            self.prox_sq[:k] += np.einsum("ij,ij->i", d, d)
        if self.buf is None:
            if self.decay != 1:
                w *= self.decay
            if self.pull is not None:
                w += self.pull[:k]
            w -= g
        else:
            if self.anchor is not None:
                d *= np.float32(cfg.lr * cfg.mu)
                g += d
            if cfg.weight_decay:
                g += np.float32(cfg.lr * cfg.weight_decay) * w
            b = self.buf[:k]
            if self.first:
                b[...] = g
            else:
                b *= np.float32(cfg.momentum)
                b += g
            w -= b
        self.first = False

    def prox_loss(self) -> np.ndarray:
        return 0.5 * self.cfg.mu * self.prox_sq


def _results(lay: _Layout, data_loss: np.ndarray, opt: _Sgd) -> list[Result]:
    total = data_loss + opt.prox_loss()
    views = opt.views(opt.w)
    out: list[Result | None] = [None] * len(lay.order)
    for r, j in enumerate(lay.order):
        out[j] = ([v[r].copy() for v in views], _metrics(float(total[r]), int(lay.steps[r])))
    return [x for x in out if x is not None]


# ----------------------------------------------------------------- Flatten / Linear / ReLU


def _train_mlp(module: nn.Module, jobs: Sequence[Job], cfg: TrainConfig) -> list[Result]:
    """Hand-written forward and backward of a ReLU MLP (logreg: no hidden layer), in numpy.
    Weights are used transposed (a layer is ``h @ W.T + b``, written ``matmul(h, W^T)``)."""
    lay = _layout(jobs)
    K = len(jobs)
    opt = _Sgd(cfg, [np.stack([jobs[k].params[i] for k in lay.order]) for i in range(len(jobs[0].params))])
    n_layers = len(jobs[0].params) // 2
    wv, gv = opt.views(opt.w), opt.views(opt.g)
    ws = [wv[2 * i].transpose(0, 2, 1) for i in range(n_layers)]  # [K, in, out] views
    bs = [wv[2 * i + 1][:, None, :] for i in range(n_layers)]
    gws = [gv[2 * i].transpose(0, 2, 1) for i in range(n_layers)]
    gbs = [gv[2 * i + 1][:, None, :] for i in range(n_layers)]
    x_all = lay.x.reshape(len(lay.x), -1)
    n_out = ws[-1].shape[2]
    width = lay.width
    # where each entry's label sits in the flattened logits of its step: the one-hot
    local = np.arange(len(lay.idx)) - np.repeat(lay.start[:-1], lay.active * width)
    label_at = local * n_out + lay.y[lay.idx]
    scale = (lay.weight * np.float32(cfg.lr))[:, None]  # lr / b per real sample, 0 for padding
    ce = np.zeros(len(lay.idx), dtype=np.float32)  # each entry's -log p(label)
    add, top = np.add.reduce, np.maximum.reduce
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(len(lay.active)):
            k, a, e = lay.block(t)
            h = x_all[lay.idx[a:e]].reshape(k, width, -1)
            acts, pres = [h], []
            for layer in range(n_layers):
                z = np.matmul(h, ws[layer][:k])
                z += bs[layer][:k]
                if layer < n_layers - 1:
                    pres.append(z)
                    h = np.maximum(z, 0)
                    acts.append(h)
            z -= top(z, axis=2, keepdims=True)
            flat = z.reshape(-1)
            at = label_at[a:e]
            zy = flat[at]
            np.exp(z, out=z)
            total = add(z, axis=2, keepdims=True)
            np.subtract(np.log(total).reshape(-1), zy, out=ce[a:e])
            z /= total
            flat[at] -= 1.0
            z *= scale[a:e].reshape(k, width, 1)
            g = z  # lr x the gradient w.r.t. the logits
            for layer in reversed(range(n_layers)):
                np.matmul(acts[layer].transpose(0, 2, 1), g, out=gws[layer][:k])
                add(g, axis=1, keepdims=True, out=gbs[layer][:k])
                if layer > 0:
                    g = np.matmul(g, ws[layer][:k].transpose(0, 2, 1))
                    g *= pres[layer - 1] > 0
            opt.step(k)
    data_loss = np.bincount(lay.row, weights=ce.astype(np.float64) * lay.weight, minlength=K)
    return _results(lay, data_loss, opt)


# ----------------------------------------------------------------------- torch.func.vmap


def _train_vmap(module: nn.Module, jobs: Sequence[Job], cfg: TrainConfig) -> list[Result]:
    """Any supported Sequential: per-client gradients by ``vmap(grad(loss))`` over the stack."""
    from torch.func import functional_call, grad_and_value, vmap

    lay = _layout(jobs)
    K = len(jobs)
    names = [n for n, _ in module.named_parameters()]

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, p, (x,))
        return (F.cross_entropy(out, y, reduction="none") * w).sum()

    step = vmap(grad_and_value(loss_fn))
    opt = _Sgd(cfg, [np.stack([jobs[k].params[i] for k in lay.order]) for i in range(len(names))])
    params = [torch.from_numpy(v) for v in opt.views(opt.w)]  # updated in place by opt.step
    grads_at = opt.views(opt.g)
    x_all, y_all = torch.from_numpy(lay.x), torch.from_numpy(lay.y)
    idx, weight = torch.from_numpy(lay.idx), torch.from_numpy(lay.weight)
    feat = tuple(lay.x.shape[1:])
    lr = np.float32(cfg.lr)
    data_loss = np.zeros(K, dtype=np.float64)
    module.train()
    for t in range(len(lay.active)):
        k, a, e = lay.block(t)
        i = idx[a:e]
        grads, loss = step({n: p[:k] for n, p in zip(names, params, strict=True)},
                           x_all[i].reshape(k, lay.width, *feat), y_all[i].reshape(k, lay.width),
                           weight[a:e].reshape(k, lay.width))
        data_loss[:k] += loss.numpy()
        for n, out in zip(names, grads_at, strict=True):
            np.multiply(grads[n].numpy(), lr, out=out[:k])
        opt.step(k)
    return _results(lay, data_loss, opt)


def _metrics(total: float, steps: int) -> dict[str, float]:
    try:
        return train_metrics(total, steps)
    except FloatingPointError:
        return {"train_loss": float("nan"), "steps": float(steps)}  # raised by the replay


# -------------------------------------------------------------------------- the executor


def _replay(result: Result) -> TrainFn:
    """A training function that 'trains' by loading what the stacked run computed."""
    params, metrics = result

    def train(module: nn.Module, data: LocalData, cfg: TrainConfig, rng: np.random.Generator) -> dict[str, float]:
        if not np.isfinite(metrics["train_loss"]):
            train_metrics(float("nan"), 1)  # the same error sequential training raises
        set_params(module, params)
        return dict(metrics)

    return train


class Stacked:
    """Executor: the batch's training tasks stacked per (model, training config); everything
    else (evaluation, unsupported models, a client's second task in one batch) sequentially."""

    def __init__(self, hosts: Mapping[ClientId, ClientHost]):
        self._hosts = hosts
        self._told: set[str] = set()

    def run(self, batch: Sequence[Task]) -> list[Reply]:
        groups: dict[tuple[int, TrainConfig], tuple[nn.Module, Program, list[Job]]] = {}
        seen: set[ClientId] = set()
        for t in batch:
            job = self._prepare(t, seen)
            seen.add(t.client)
            if job is not None:
                module, program, cfg, j = job
                groups.setdefault((id(module), cfg), (module, program, []))[2].append(j)
        results: dict[str, Result] = {}
        for (_, cfg), (module, program, jobs) in groups.items():
            for j, r in zip(jobs, program(module, jobs, cfg), strict=True):
                results[j.task.task_id] = r
        replies = []
        for t in batch:
            done = results.get(t.task_id)
            replies.append(self._hosts[t.client](t, None if done is None else _replay(done)))
        return replies

    def _prepare(self, t: Task, seen: set[ClientId]) -> tuple[nn.Module, Program, TrainConfig, Job] | None:
        if t.kind != "train" or t.client in seen:
            return None
        host = self._hosts[t.client]
        try:
            config = tasks.parse(t.kind, t.config)
            assert isinstance(config, tasks.TrainTask)
            module = host.models.get(config.model)
            params, _ = receive(config.downlink, t.params, host.state.held)
        except Exception:  # the sequential run reports it as the client's error reply
            return None
        program = program_for(module, config.train)
        if isinstance(program, str):
            if program not in self._told:
                self._told.add(program)
                log.warning("stacked execution: running clients sequentially: %s", program)
            return None
        gen = frng.rng(config.seed, "train", t.round, t.client)  # the generator ctx.rng("train") gives
        data = host.state.train
        return module, program, config.train, Job(t, params, data, *batch_plan(len(data), config.train, gen))

    def close(self) -> None:
        pass
