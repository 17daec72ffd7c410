"""Local training and evaluation on in-memory tensors: a plain torch loop, no DataLoader.

A training function is ``fn(model, data, config, rng) -> metrics``: it trains ``model`` in place
from the global parameters it was loaded with, draws batches from ``rng`` (keyed by seed, round
and client) and returns metrics. :func:`sgd_train` is the built-in one; a scenario can name its
own (``train: {fn: "mypkg.train:local_step"}``), and the same function then runs in every mode.
torch's own draws (dropout, augmentation) are keyed too: the caller runs training inside
:func:`keyed_torch`, so no draw comes from torch's global generator state.

Classification and causal language modelling share the loop; the shape of the targets says
which (:func:`task_loss`): (B,) class labels against (B, C) logits, or (B, T) next-token ids (the
inputs shifted by one, made by the dataset; -100 marks padding) against (B, T, V) logits, where
:func:`evaluate` adds perplexity and its accuracy is per token. Classification runs exactly the
ops it always did.

Where it runs (``train.device``): ``cpu`` (the default: a scenario's results then do not depend
on the machine that runs it, and fedkit's small models are faster on CPU than a GPU's transfers
allow), ``cuda``, or ``auto`` (cuda when ``torch.cuda.is_available()``, else cpu). The module
moves to the device for the task and back to CPU after it, and each batch moves as it is drawn,
so params always come back as CPU numpy arrays and nothing else in fedkit sees the device. On
CPU no tensor moves at all: ``cpu`` and ``auto`` on a machine without a GPU run the same ops,
bit-identical. The seeded RNG contract holds on the GPU too (the CUDA generator is seeded with
the task's torch seed, :func:`on_device`), but CUDA kernels differ from CPU ones and some are
non-deterministic: cuda results are reproducible in distribution, not bit-identical to cpu.
``cuda`` without a GPU is an error naming the problem, raised where training runs (a server
without a GPU may coordinate devices that have one).

FedProx (Li et al., MLSys 2020) adds (mu/2)||w - w_global||^2 to the local loss; with mu == 0
the term is skipped entirely, so FedProx(mu=0) is bit-identical to FedAvg.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedkit.types import Strict


class TrainConfig(Strict):
    """A client's training settings for one task (frozen; unknown keys are errors)."""

    epochs: int = Field(default=1, ge=1)
    steps: int | None = Field(default=None, ge=1, description="fixed number of local steps; overrides epochs")
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    mu: float = Field(default=0.0, ge=0, description="FedProx proximal term (set by strategy fedprox)")
    fn: str | None = Field(default=None, description="custom training function 'package.module:function'")
    device: Literal["cpu", "cuda", "auto"] = Field(default="cpu", description="where local training runs")


@dataclass(frozen=True)
class LocalData:
    """One client's samples as tensors (inputs float32, labels int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


TrainFn = Callable[[nn.Module, LocalData, TrainConfig, np.random.Generator], Mapping[str, float]]


@contextlib.contextmanager
def keyed_torch(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded by ``seed``, restoring it afterwards.

    Only the CPU generator is seeded (the one forked here): ``torch.manual_seed`` would also
    queue a lazy seeding of every uninitialised accelerator, capturing a stack trace each time
    (about a millisecond per task, and a queue that grows for the whole run)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` (cuda when one is visible) as a torch device; ``cuda``
    without a GPU: a ValueError saying so."""
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("cuda", "auto"):
        raise ValueError(f"train.device {name!r}; known: cpu, cuda, auto")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "auto":
        return torch.device("cpu")
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    raise ValueError(f"train.device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False; "
                     f"torch {torch.__version__} is {build}); use device: auto or cpu")


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """``module`` on ``device`` for a block, back on CPU after it (nothing moves for cpu). The
    device's generator is seeded with the block's torch seed (:func:`keyed_torch`'s), so GPU
    draws (dropout) are keyed like CPU ones, and restored afterwards."""
    if device.type == "cpu":
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.cuda.manual_seed(torch.initial_seed())
        module.to(device)
        try:
            yield
        finally:
            module.to("cpu")


def _optimizer(cfg: TrainConfig, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warm_up() -> None:
    """Do now what the first training task of a process would otherwise: torch.optim imports
    torch._dynamo when it builds its first optimizer (seconds). The pool executor calls it
    before it forks its workers, so they inherit the import instead of each paying for it."""
    _optimizer(TrainConfig(), [torch.zeros(1, requires_grad=True)])


def batch_plan(n: int, cfg: TrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One task's batches as (sample indices in order, size of each batch): whole shuffled
    epochs (one permutation per epoch; a short last batch where the size does not divide n), or
    exactly ``steps`` batches (as many epochs as that takes)."""
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bs = min(cfg.batch_size, n)
    per_epoch = np.array([bs] * (n // bs) + ([n % bs] if n % bs else []), dtype=np.int64)
    epochs = cfg.epochs if cfg.steps is None else -(-cfg.steps // len(per_epoch))
    idx = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    sizes = np.tile(per_epoch, epochs)
    if cfg.steps is not None:
        sizes = sizes[: cfg.steps]
        idx = idx[: int(sizes.sum())]
    return idx, sizes


def batches(n: int, cfg: TrainConfig, rng: np.random.Generator) -> list[torch.Tensor]:
    """Index batches for one task (:func:`batch_plan`), as tensors."""
    idx, sizes = batch_plan(n, cfg, rng)
    return list(torch.from_numpy(idx).split(sizes.tolist())) if len(idx) else []


def sgd_train(
    module: nn.Module, data: LocalData, cfg: TrainConfig, rng: np.random.Generator
) -> dict[str, float]:
    """Minibatch cross-entropy training in place (on ``cfg.device``); returns mean batch loss
    and steps taken."""
    device = resolve_device(cfg.device)
    with on_device(module, device):
        module.train()
        weights = list(module.parameters())
        opt = _optimizer(cfg, weights)
        anchor = [w.detach().clone() for w in weights] if cfg.mu > 0 else None
        total, steps = 0.0, 0
        for idx in batches(len(data), cfg, rng):
            opt.zero_grad(set_to_none=True)
            x, y = data.x[idx], data.y[idx]
            if device.type != "cpu":
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = task_loss(module(x), y)
            if anchor is not None:
                prox = sum(((w - a) ** 2).sum() for w, a in zip(weights, anchor, strict=True))
                loss = loss + 0.5 * cfg.mu * prox
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return train_metrics(total, steps)


IGNORE = -100  # a target that counts for nothing (padding); F.cross_entropy's ignore_index


def task_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of (B, C) logits vs (B,) labels, or of (B, T, V) next-token logits vs
    (B, T) targets (mean over the targets that are not :data:`IGNORE`)."""
    if y.ndim == 2:
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction=reduction)
    return F.cross_entropy(out, y, reduction=reduction)


def train_metrics(total_loss: float, steps: int) -> dict[str, float]:
    """What a local training run reports: mean batch loss and steps (diverged: an error)."""
    if not np.isfinite(total_loss):
        raise FloatingPointError("local training diverged (loss is NaN or Inf); lower the lr")
    return {"train_loss": total_loss / max(steps, 1), "steps": float(steps)}


@torch.no_grad()
def evaluate(module: nn.Module, data: LocalData, batch_size: int = 4096, device: str = "cpu") -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``module`` (as loaded) on ``data``; for a causal LM
    both are per target token, and ``perplexity`` = exp(mean token loss) is added. ``device``:
    as ``train.device``."""
    dev = resolve_device(device)
    with on_device(module, dev):
        module.eval()
        if data.y.ndim == 2:
            return _evaluate_lm(module, data, max(1, batch_size // max(data.y.shape[1], 1)), dev)
        loss, correct = 0.0, 0
        for i in range(0, len(data), batch_size):
            xb, yb = _to(data.x[i : i + batch_size], dev), _to(data.y[i : i + batch_size], dev)
            out = module(xb)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
        n = max(len(data), 1)
        return {"loss": loss / n, "accuracy": correct / n}


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if device.type == "cpu" else t.to(device, non_blocking=True)


def _evaluate_lm(module: nn.Module, data: LocalData, batch_size: int, device: torch.device) -> dict[str, float]:
    loss, correct, tokens = 0.0, 0, 0
    for i in range(0, len(data), batch_size):
        yb = _to(data.y[i : i + batch_size], device)
        out = module(_to(data.x[i : i + batch_size], device))
        keep = yb != IGNORE
        loss += float(task_loss(out, yb, reduction="sum"))
        correct += int(((out.argmax(-1) == yb) & keep).sum())
        tokens += int(keep.sum())
    mean = loss / max(tokens, 1)
    return {"loss": mean, "accuracy": correct / max(tokens, 1), "perplexity": float(np.exp(mean))}
