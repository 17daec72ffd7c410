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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkit import rng as frng
from fedkit.models import LocalData, TrainConfig, set_params
from fedkit.models.train import TrainFn, batches, train_metrics
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
    batches: list[torch.Tensor]


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
    """Flatten, then Linear layers with ReLU between them (and none after the last)."""
    if not layers or not all(isinstance(m, _LINEAR) for m in layers):
        return False
    if not isinstance(layers[0], nn.Flatten) or layers[0].start_dim != 1:
        return False
    rest = layers[1:]
    kinds = "".join("L" if isinstance(m, nn.Linear) else "R" if isinstance(m, nn.ReLU) else "F" for m in rest)
    return bool(kinds) and kinds.endswith("L") and "F" not in kinds and "RR" not in kinds and "LL" not in kinds


# ------------------------------------------------------------------------- the batch layout


@dataclass(frozen=True)
class _Layout:
    """Every job's batches as index and weight arrays over the concatenated data.

    Jobs are sorted by number of steps, longest first, so at step ``t`` the clients still
    training are the prefix ``[:active[t]]``. Padding rows point at an all-zero sample with
    weight 0; a real row of a batch of ``b`` samples weighs ``1/b`` (the batch mean).
    """

    order: list[int]  # job index of each stack row
    steps: np.ndarray  # [K] steps of each row
    active: np.ndarray  # [T] rows still training at step t
    idx: np.ndarray  # [T, K, B] rows of x
    weight: np.ndarray  # [T, K, B] float32
    x: np.ndarray  # [N + 1, ...] float32, last row zero
    y: np.ndarray  # [N + 1] int64


def _layout(jobs: Sequence[Job]) -> _Layout:
    steps = np.array([len(j.batches) for j in jobs], dtype=np.int64)
    order = sorted(range(len(jobs)), key=lambda k: -steps[k])
    steps = steps[order]
    t_max = int(steps[0]) if len(steps) else 0
    width = max((len(b) for j in jobs for b in j.batches), default=1)
    sizes = [len(jobs[k].data) for k in order]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pad = int(offsets[-1])
    idx = np.full((t_max, len(jobs), width), pad, dtype=np.int64)
    weight = np.zeros((t_max, len(jobs), width), dtype=np.float32)
    for row, k in enumerate(order):
        for t, b in enumerate(jobs[k].batches):
            n = len(b)
            idx[t, row, :n] = b.numpy() + offsets[row]
            weight[t, row, :n] = np.float32(1.0) / np.float32(n)
    feat = jobs[0].data.x.shape[1:]
    xs = [jobs[k].data.x.numpy().astype(np.float32, copy=False) for k in order]
    x = np.concatenate([*xs, np.zeros((1, *feat), np.float32)])
    y = np.concatenate([*(jobs[k].data.y.numpy() for k in order), np.zeros(1, np.int64)])
    active = (steps[None, :] > np.arange(t_max)[:, None]).sum(1)
    return _Layout(order, steps, active, idx, weight, x, y)


class _Sgd:
    """torch.optim.SGD's update on stacked tensors of the active prefix, plus FedProx's term.

    ``g`` is the data gradient; ``weight_decay`` adds ``wd * w``, ``mu`` adds ``mu * (w - w0)``
    (the gradient of ``mu/2 ||w - w0||^2``), momentum keeps one buffer per client and tensor.
    """

    def __init__(self, cfg: TrainConfig, params: Sequence[Any]):
        self.cfg = cfg
        self.anchor = [p.copy() for p in params] if cfg.mu > 0 else None
        self.buf: list[Any] | None = None

    def prox(self, params: Sequence[Any], k: int) -> Any:
        """Per-client ``mu/2 ||w - w0||^2`` of the active prefix (0 without FedProx)."""
        if self.anchor is None:
            return 0.0
        total = 0.0
        for p, a in zip(params, self.anchor, strict=True):
            d = p[:k] - a[:k]
            total = total + (d * d).reshape(k, -1).sum(1)
        return 0.5 * self.cfg.mu * total

    def step(self, params: Sequence[Any], grads: Sequence[Any], k: int) -> None:
        cfg = self.cfg
        first = self.buf is None
        if first and cfg.momentum:
            self.buf = [p.copy() * 0 for p in params]
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            w = p[:k]
            if self.anchor is not None:
                g = g + cfg.mu * (w - self.anchor[i][:k])
            if cfg.weight_decay:
                g = g + cfg.weight_decay * w
            if cfg.momentum:
                assert self.buf is not None
                b = self.buf[i][:k]
                if first:
                    b[...] = g
                else:
                    b *= cfg.momentum
                    b += g
                g = b
            w -= cfg.lr * g


# ----------------------------------------------------------------- Flatten / Linear / ReLU


def _train_mlp(module: nn.Module, jobs: Sequence[Job], cfg: TrainConfig) -> list[Result]:
    """Hand-written forward and backward of a ReLU MLP (logreg: no hidden layer), in numpy.

    Weights are kept transposed, ``[K, in, out]``, so a layer is ``h @ W + b``.
    """
    lay = _layout(jobs)
    K = len(jobs)
    n_layers = len(jobs[0].params) // 2
    ws = [np.stack([np.ascontiguousarray(jobs[k].params[2 * i].T) for k in lay.order]).astype(np.float32)
          for i in range(n_layers)]
    bs = [np.stack([jobs[k].params[2 * i + 1] for k in lay.order]).astype(np.float32)[:, None, :]
          for i in range(n_layers)]
    params = [p for pair in zip(ws, bs, strict=True) for p in pair]
    opt = _Sgd(cfg, params)
    x_all = lay.x.reshape(len(lay.x), -1)
    total = np.zeros(K, dtype=np.float64)
    rows = np.arange(K)[:, None]
    cols = np.arange(lay.idx.shape[2])[None, :]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(len(lay.active)):
            k = int(lay.active[t])
            i = lay.idx[t, :k]
            w = lay.weight[t, :k]
            h = x_all[i]
            acts, pres = [h], []
            for layer in range(n_layers):
                z = np.matmul(h, ws[layer][:k])
                z += bs[layer][:k]
                if layer < n_layers - 1:
                    pres.append(z)
                    h = np.maximum(z, 0)
                    acts.append(h)
            y = lay.y[i]
            m = z.max(axis=2, keepdims=True)
            e = np.exp(z - m)
            s = e.sum(axis=2, keepdims=True)
            zy = z[rows[:k], cols, y]
            loss = ((np.log(s[..., 0]) + m[..., 0] - zy) * w).sum(1, dtype=np.float32)
            total[:k] += loss + opt.prox(params, k)
            g = e / s
            g[rows[:k], cols, y] -= 1.0
            g *= w[..., None]
            grads: list[Any] = [None] * len(params)
            for layer in reversed(range(n_layers)):
                grads[2 * layer] = np.matmul(acts[layer].transpose(0, 2, 1), g)
                grads[2 * layer + 1] = g.sum(axis=1, keepdims=True)
                if layer > 0:
                    g = np.matmul(g, ws[layer][:k].transpose(0, 2, 1))
                    g *= pres[layer - 1] > 0
            opt.step(params, grads, k)
    out: list[Result | None] = [None] * K
    for row, j in enumerate(lay.order):
        trained = []
        for layer in range(n_layers):
            trained += [np.ascontiguousarray(ws[layer][row].T), bs[layer][row, 0].copy()]
        out[j] = (trained, _metrics(total[row], int(lay.steps[row])))
    return [r for r in out if r is not None]


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
    params = [torch.from_numpy(np.stack([jobs[k].params[i] for k in lay.order]).astype(np.float32))
              for i in range(len(names))]
    opt = _Sgd(cfg, [p.numpy() for p in params])
    views = [p.numpy() for p in params]  # the optimizer updates the tensors through these
    x_all, y_all = torch.from_numpy(lay.x), torch.from_numpy(lay.y)
    idx, weight = torch.from_numpy(lay.idx), torch.from_numpy(lay.weight)
    total = np.zeros(K, dtype=np.float64)
    module.train()
    for t in range(len(lay.active)):
        k = int(lay.active[t])
        i = idx[t, :k]
        with torch.no_grad():
            grads, loss = step({n: p[:k] for n, p in zip(names, params, strict=True)},
                               x_all[i], y_all[i], weight[t, :k])
        total[:k] += loss.numpy() + opt.prox(views, k)
        opt.step(views, [grads[n].numpy() for n in names], k)
    out: list[Result | None] = [None] * K
    for row, j in enumerate(lay.order):
        out[j] = ([v[row].copy() for v in views], _metrics(total[row], int(lay.steps[row])))
    return [r for r in out if r is not None]


def _metrics(total: float, steps: int) -> dict[str, float]:
    try:
        return train_metrics(float(total), steps)
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
        return module, program, config.train, Job(t, params, data, batches(len(data), config.train, gen))

    def close(self) -> None:
        pass
